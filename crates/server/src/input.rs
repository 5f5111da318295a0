//! Input shapes shared by every edge that receives JSON (the HTTP API, SQS commands): decimals
//! read from their raw JSON text, never through `f64` ([`DecimalText`]), and the one movement
//! body ([`MovementIn`]) whose parse is `NewMovement::from_text`.

use std::fmt;

use malaka_inventory::{InventoryError, MovementText, NewMovement, parse_decimal};
use serde::de::{self, Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A decimal as it was sent: a JSON number's own text (`12.5`, `1e3`) or a JSON string holding
/// one (`"12.5"`). `parse_decimal` gives its exact value; nothing is rounded on the way.
#[derive(Clone, PartialEq, Eq)]
pub struct DecimalText(String);

impl DecimalText {
    /// The text (a string's content, without quotes).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its exact value, checked against the limits; errors name `field`.
    ///
    /// # Errors
    /// Not a decimal, too many decimal places, or too large (see `parse_decimal`).
    pub fn parse(&self, field: &str) -> Result<rust_decimal::Decimal, InventoryError> {
        parse_decimal(field, &self.0)
    }
}

impl fmt::Debug for DecimalText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DecimalText {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Box<RawValue>>::deserialize(d)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text)
                .map(Self)
                .map_err(de::Error::custom),
            Some(b'-' | b'0'..=b'9') => Ok(Self(text.to_owned())),
            _ => Err(de::Error::invalid_type(
                de::Unexpected::Other(kind(text)),
                &"a decimal number, or a string holding one",
            )),
        }
    }
}

fn kind(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a value",
    }
}

/// One stock movement, as the REST API takes it (`POST /movements`, each element of a batch)
/// and as SQS stock commands carry it (where `type` comes from the envelope). Its OpenAPI
/// schema (one object per `type`, from the same constants its parse uses) is in
/// `http::schema`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementIn {
    /// `receipt`, `issue`, `transfer` or `count`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Article.
    pub sku: String,
    /// Warehouse (the source of a transfer).
    pub warehouse: String,
    /// Destination of a transfer.
    #[serde(default)]
    pub to_warehouse: Option<String>,
    /// Quantity: a decimal, as a JSON number or a string.
    pub qty: DecimalText,
    /// Unit cost (a receipt needs one; a count may have one): a decimal, as a JSON number or
    /// a string.
    #[serde(default)]
    pub unit_cost: Option<DecimalText>,
    /// External reference (order number, ...).
    #[serde(default)]
    pub reference: Option<String>,
    /// Note.
    #[serde(default)]
    pub note: Option<String>,
}

impl MovementIn {
    /// Parses it; `kind` is the type when the envelope gives it (SQS), else the body's own
    /// `type` is required. Errors name the field.
    ///
    /// # Errors
    /// A missing type, or any refusal of `NewMovement::from_text`.
    pub fn parse(&self, kind: Option<&str>) -> Result<NewMovement, InventoryError> {
        let kind = match (kind, self.kind.as_deref()) {
            (Some(k), None) => k,
            (Some(k), Some(t)) if k == t => k,
            (Some(k), Some(t)) => {
                return Err(InventoryError::invalid(
                    "type",
                    format!("type {t:?} does not match the command's {k:?}"),
                ));
            }
            (None, Some(t)) => t,
            (None, None) => return Err(InventoryError::invalid("type", "type is required")),
        };
        NewMovement::from_text(&MovementText {
            kind,
            sku: &self.sku,
            warehouse: &self.warehouse,
            to_warehouse: self.to_warehouse.as_deref(),
            qty: self.qty.as_str(),
            unit_cost: self.unit_cost.as_ref().map(DecimalText::as_str),
            reference: self.reference.as_deref(),
            note: self.note.as_deref(),
        })
    }
}

/// A struct read from a JSON object only. (A derived `Deserialize` also takes a struct's fields
/// in order from an array, `[null, null]`, which no schema of the API allows.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Fields<T> {
            type Value = Object<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }

        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// For `#[serde(deserialize_with = "object")]`: a struct field given as a JSON object only.
///
/// # Errors
/// Not an object, or the struct's own errors.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Object::deserialize(d).map(|o| o.0)
}

/// For `#[serde(deserialize_with = "objects")]`: a list of structs, each a JSON object.
///
/// # Errors
/// Not an array of objects, or the structs' own errors.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<Object<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

/// Deserializes `json` into `T` with the path of the first shape error, prefixed with `at`
/// (`data.`, `movements[3].`): one place for the JSON rules of every edge.
///
/// # Errors
/// `Malformed` for text that is not JSON; `Shape` naming the field otherwise.
pub fn from_json<T: de::DeserializeOwned>(
    json: impl AsRef<[u8]>,
    at: &str,
) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(json.as_ref());
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return JsonError::Malformed(inner.to_string());
        }
        let message = inner.to_string();
        // `missing field `name`` is reported on the enclosing object.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name,
            (".", None) => String::new(),
            (_, Some(name)) => format!("{path}.{name}"),
            (_, None) => path,
        };
        let field = match (at.trim_end_matches('.'), field.as_str()) {
            (a, "") => a.to_owned(),
            ("", f) => f.to_owned(),
            (a, f) => format!("{a}.{f}"),
        };
        JsonError::Shape { field, message }
    })?;
    de.end().map_err(|e| JsonError::Malformed(e.to_string()))?;
    Ok(value)
}

/// Why JSON could not become the shape asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Malformed(String),
    /// JSON of the wrong shape; `field` is the path to the fault.
    #[error("{message}")]
    Shape {
        /// Path (`qty`, `data.lines[1].qty`); empty for the whole value.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl From<JsonError> for InventoryError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Malformed(m) => InventoryError::invalid("", format!("not valid JSON: {m}")),
            JsonError::Shape { field, message } => InventoryError::invalid(&field, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::{Decimal, dec};

    /// One table for every edge: each case is a movement body, the field a refusal names (or
    /// the quantity it posts), the same whether it comes through HTTP or SQS.
    /// What a body posts (its quantity) or the field and code that refuse it.
    type Expected = Result<&'static str, (&'static str, &'static str)>;

    const CASES: &[(&str, Expected)] = &[
        (
            r#"{"sku":"A","warehouse":"W","qty":123456789012.123456,"unit_cost":1}"#,
            Ok("123456789012.123456"),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":"123456789012.123456","unit_cost":"1"}"#,
            Ok("123456789012.123456"),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":1e3,"unit_cost":0}"#,
            Ok("1000"),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":"1.5E+2","unit_cost":0}"#,
            Ok("150"),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":2.50000000,"unit_cost":0}"#,
            Ok("2.5"),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":0.1234567,"unit_cost":1}"#,
            Err(("qty", "out_of_range")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":"0.1234567","unit_cost":1}"#,
            Err(("qty", "out_of_range")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":1e12,"unit_cost":1}"#,
            Err(("qty", "out_of_range")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":1e400,"unit_cost":1}"#,
            Err(("qty", "out_of_range")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":5,"unit_cost":1e12}"#,
            Err(("unit_cost", "out_of_range")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":" 5","unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":"5 ","unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":"five","unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":-5,"unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":true,"unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":null,"unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","unit_cost":1}"#,
            Err(("qty", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":1}"#,
            Err(("unit_cost", "invalid")),
        ),
        (
            r#"{"sku":"A","warehouse":"W","qty":1,"unit_cost":1,"extra":1}"#,
            Err(("extra", "invalid")),
        ),
        (
            r#"{"sku":"A B","warehouse":"W","qty":1,"unit_cost":1}"#,
            Err(("sku", "invalid")),
        ),
    ];

    fn outcome(r: Result<NewMovement, InventoryError>) -> Result<Decimal, (String, &'static str)> {
        match r {
            Ok(m) => Ok(m.qty.get()),
            Err(InventoryError::Invalid { field, .. }) => Err((field, "invalid")),
            Err(InventoryError::OutOfRange { field, .. }) => Err((field, "out_of_range")),
            Err(e) => panic!("{e}"),
        }
    }

    fn expected(e: &Expected) -> Result<Decimal, (String, &'static str)> {
        match e {
            Ok(q) => Ok(q.parse().unwrap()),
            Err((f, "invalid")) => Err(((*f).to_owned(), "invalid")),
            Err((f, _)) => Err(((*f).to_owned(), "out_of_range")),
        }
    }

    /// The HTTP path: the body (with its `type`) straight into `MovementIn`.
    fn http(body: &str) -> Result<NewMovement, InventoryError> {
        let with_type = body.replacen('{', r#"{"type":"receipt","#, 1);
        from_json::<MovementIn>(&with_type, "")?.parse(None)
    }

    /// The SQS path: the envelope's `data`, its type from the envelope.
    fn sqs(body: &str) -> Result<NewMovement, InventoryError> {
        let envelope = format!(r#"{{"id":"1","type":"stock.receipt","data":{body}}}"#);
        match crate::sqs::movements_of(&crate::sqs::Envelope::parse(&envelope).unwrap()) {
            Ok(Some(mut ms)) => Ok(ms.remove(0)),
            Ok(None) => panic!("not a command"),
            Err(InventoryError::Invalid { field, message }) => Err(InventoryError::Invalid {
                field: field.trim_start_matches("data.").to_owned(),
                message,
            }),
            Err(InventoryError::OutOfRange { field, message }) => Err(InventoryError::OutOfRange {
                field: field.trim_start_matches("data.").to_owned(),
                message,
            }),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn one_table_for_http_and_sqs() {
        for (body, want) in CASES {
            let want = expected(want);
            assert_eq!(outcome(http(body)), want, "HTTP {body}");
            assert_eq!(outcome(sqs(body)), want, "SQS {body}");
        }
    }

    #[test]
    fn numbers_keep_every_digit() {
        let m: MovementIn = from_json(
            r#"{"type":"count","sku":"A","warehouse":"W","qty":123456789012.123456}"#,
            "",
        )
        .unwrap();
        assert_eq!(m.qty.as_str(), "123456789012.123456");
        assert_eq!(m.parse(None).unwrap().qty.get(), dec!(123456789012.123456));
    }

    #[test]
    fn types_must_agree() {
        let m: MovementIn =
            from_json(r#"{"type":"issue","sku":"A","warehouse":"W","qty":1}"#, "").unwrap();
        assert!(m.parse(Some("issue")).is_ok());
        assert!(
            matches!(m.parse(Some("receipt")), Err(InventoryError::Invalid { field, .. }) if field == "type")
        );
        let m: MovementIn = from_json(r#"{"sku":"A","warehouse":"W","qty":1}"#, "").unwrap();
        assert!(
            matches!(m.parse(None), Err(InventoryError::Invalid { field, .. }) if field == "type")
        );
    }

    #[test]
    fn paths_are_prefixed() {
        let e = from_json::<MovementIn>(r#"{"sku":"A","warehouse":"W","qty":[1]}"#, "data.")
            .unwrap_err();
        assert!(
            matches!(e, JsonError::Shape { ref field, .. } if field == "data.qty"),
            "{e:?}"
        );
        assert!(matches!(
            from_json::<MovementIn>("{", ""),
            Err(JsonError::Malformed(_))
        ));
    }
}
