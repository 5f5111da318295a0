//! The OpenAPI schemas of the API's values, built from the constants and variant lists their
//! parsers use (`malaka_inventory::CODE_PATTERN`, `SKU_MAX`, `MovementKind::ALL`, ...), so the
//! document says exactly what the server takes and cannot drift from it. Each type here is a
//! schema only: handlers name it in `#[schema(value_type = ..)]` or in `params(..)`.

use std::borrow::Cow;

use malaka_inventory::{
    AlertLevel, CODE_PATTERN, InboxState, MAX_BATCH, MAX_DECIMAL_TEXT, MovementKind, NAME_MAX,
    NON_NEGATIVE_DECIMAL_PATTERN, NOTE_MAX, OPTIONAL_TEXT_PATTERN, POSITIVE_DECIMAL_PATTERN,
    QTY_SCALE, REFERENCE_MAX, ReportKind, SKU_MAX, TEXT_PATTERN, UNIT_MAX, ValuationMethod,
    WAREHOUSE_CODE_MAX,
};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, Discriminator, KnownFormat, Object,
    ObjectBuilder, OneOfBuilder, Ref, Schema, SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

/// Largest `limit` of a list.
pub(crate) const PAGE_MAX: u32 = 1000;

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn object(o: ObjectBuilder) -> RefOr<Schema> {
    RefOr::T(Schema::Object(o.build()))
}

/// A code (SKU, warehouse code) of 1 to `max` characters of [`CODE_PATTERN`].
fn code(max: usize, description: &str, example: &str) -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(CODE_PATTERN))
        .description(Some(description))
        .examples([example])
}

/// Free text of at most `max` characters: [`TEXT_PATTERN`] (something other than white space,
/// no control characters) when `required`, else [`OPTIONAL_TEXT_PATTERN`].
pub(crate) fn text(max: usize, required: bool) -> ObjectBuilder {
    string()
        .min_length(Some(usize::from(required)))
        .max_length(Some(max))
        .pattern(Some(if required {
            TEXT_PATTERN
        } else {
            OPTIONAL_TEXT_PATTERN
        }))
}

/// One of `values`.
pub(crate) fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    string().enum_values(Some(values.into_iter().map(str::to_owned)))
}

/// A list of `values`, comma-separated (a query parameter).
pub(crate) fn comma_list<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    let alternatives = values.into_iter().collect::<Vec<_>>().join("|");
    string().pattern(Some(format!("^(({alternatives}),)*({alternatives})?$")))
}

/// A decimal as `parse_decimal` takes it: a string of `pattern`, or a JSON number (its text is
/// read exactly: at most 6 decimal places, below 10^12).
fn decimal(pattern: &str, positive: bool, description: &str) -> RefOr<Schema> {
    let number = ObjectBuilder::new()
        .schema_type(Type::Number)
        .multiple_of(Some(10f64.powi(-i32::try_from(QTY_SCALE).unwrap_or(6))))
        .exclusive_maximum(Some(1e12));
    let number = if positive {
        number.exclusive_minimum(Some(0))
    } else {
        number.minimum(Some(0))
    };
    RefOr::T(Schema::AnyOf(
        AnyOfBuilder::new()
            .item(
                string()
                    .min_length(Some(1))
                    .max_length(Some(MAX_DECIMAL_TEXT))
                    .pattern(Some(pattern))
                    .examples(["12.5"]),
            )
            .item(number)
            .description(Some(description))
            .build(),
    ))
}

/// Declares a decimal schema named `$name`.
macro_rules! decimal_schema {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $pattern:expr, $positive:expr, $description:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                decimal($pattern, $positive, $description)
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

/// A nullable form of `schema`.
fn nullable(schema: RefOr<Schema>) -> RefOr<Schema> {
    RefOr::T(Schema::OneOf(
        OneOfBuilder::new()
            .item(Object::with_type(Type::Null))
            .item(schema)
            .build(),
    ))
}

fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// Declares a schema-only type named `$name` in the document.
macro_rules! schema {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                object($schema)
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

schema!(
    /// `Sku::parse`.
    SkuSchema,
    "Sku",
    code(
        SKU_MAX,
        "An article's stock-keeping unit: letters, digits, `-`, `_` and `.`; case-sensitive.",
        "WIDGET-1"
    )
);
schema!(
    /// `WarehouseCode::parse`.
    WarehouseCodeSchema,
    "WarehouseCode",
    code(
        WAREHOUSE_CODE_MAX,
        "A warehouse code: letters, digits, `-`, `_` and `.`; case-sensitive.",
        "MAIN"
    )
);
decimal_schema!(
    /// `parse_decimal` and `Quantity::parse`/`Money::parse` (not negative).
    DecimalSchema,
    "Decimal",
    NON_NEGATIVE_DECIMAL_PATTERN,
    false,
    "A decimal at or above 0, below 10^12, with at most 6 decimal places: best as a string \
     (`\"12.5\"`); a JSON number is read from its text, exactly."
);
decimal_schema!(
    /// `parse_decimal` and `Quantity::parse(.., positive)`.
    PositiveDecimalSchema,
    "PositiveDecimal",
    POSITIVE_DECIMAL_PATTERN,
    true,
    "A decimal above 0, below 10^12, with at most 6 decimal places: best as a string \
     (`\"12.5\"`); a JSON number is read from its text, exactly."
);
schema!(
    /// `ValuationMethod`.
    ValuationSchema,
    "ValuationMethod",
    one_of(ValuationMethod::ALL.map(ValuationMethod::as_str))
        .description(Some("How an article's stock is valued."))
);
schema!(
    /// `MovementKind`.
    MovementKindSchema,
    "MovementKind",
    one_of(MovementKind::ALL.map(MovementKind::as_str))
);
schema!(
    /// `AlertLevel`.
    AlertLevelSchema,
    "AlertLevel",
    one_of(AlertLevel::ALL.map(AlertLevel::as_str))
);
schema!(
    /// The levels an alert (or a notification rule's `min_level`) can have: every level but
    /// NORMAL.
    AlertingLevelSchema,
    "AlertingLevel",
    one_of(
        AlertLevel::ALL
            .into_iter()
            .filter(|l| l.is_alert())
            .map(AlertLevel::as_str)
    )
);
schema!(
    /// `ReportKind`.
    ReportKindSchema,
    "ReportKind",
    one_of(ReportKind::ALL.map(ReportKind::as_str))
);
schema!(
    /// `InboxState`.
    InboxStateSchema,
    "InboxState",
    one_of(InboxState::ALL.map(InboxState::as_str))
);
schema!(
    /// An article's or a warehouse's name (`parse_text`).
    NameSchema,
    "Name",
    text(NAME_MAX, true)
);
schema!(
    /// An article's unit of measure (`parse_text`).
    UnitSchema,
    "Unit",
    text(UNIT_MAX, true).examples(["pcs"])
);
schema!(
    /// A filter compared as text (`inventory::text_filter`).
    TextFilterSchema,
    "TextFilter",
    string().pattern(Some("^[^\\x00]*$"))
);
schema!(
    /// `limit` of the lists (`inventory::limit`).
    PageLimit,
    "PageLimit",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(1))
        .maximum(Some(PAGE_MAX))
);
schema!(
    /// `GET /ledger`'s `cursor` (`LedgerCursor::parse`): `ID`, or `NANOS.ID` for pages in
    /// posting-time order.
    CursorSchema,
    "LedgerCursor",
    string()
        // Each number up to i64::MAX: 18 digits, or 19 below 9 * 10^18.
        .pattern(Some(
            "^(([0-9]{1,18}|[1-8][0-9]{18})\\.)?([0-9]{1,18}|[1-8][0-9]{18})$",
        ))
        .description(Some("The `next` of the previous page, as it was given"))
);
schema!(
    /// `GET /balances`'s `cursor` (`BalanceCursor::parse`): `SKU/WAREHOUSE`.
    BalanceCursorSchema,
    "BalanceCursor",
    {
        let chars = CODE_PATTERN.trim_start_matches('^').trim_end_matches("+$");
        string()
            .pattern(Some(format!(
                "^{chars}{{1,{SKU_MAX}}}/{chars}{{1,{WAREHOUSE_CODE_MAX}}}$"
            )))
            .description(Some("The `next` of the previous page, as it was given"))
    }
);
schema!(
    /// A page position that is a record id (`inventory::id_cursor`: `after` of tokens and
    /// notification rules, `before` of the recent ledger).
    IdCursorSchema,
    "IdCursor",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
);
schema!(
    /// `Idempotency-Key` (`idempotency::valid_key`): 1 to 255 visible ASCII characters.
    IdempotencyKeySchema,
    "IdempotencyKey",
    string()
        .min_length(Some(1))
        .max_length(Some(super::idempotency::MAX_KEY))
        .pattern(Some("^[\\x21-\\x7e]+$"))
);

/// `GET /ledger`'s `from` and `to`: an RFC 3339 time or a date (`inventory::time`).
#[derive(Debug)]
pub(crate) struct TimeOrDateSchema;

impl PartialSchema for TimeOrDateSchema {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::AnyOf(
            AnyOfBuilder::new()
                .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))))
                .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))))
                .description(Some(
                    "An RFC 3339 time, or a YYYY-MM-DD date (its midnight, UTC).",
                ))
                .build(),
        ))
    }
}

impl ToSchema for TimeOrDateSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TimeOrDate")
    }
}

/// One movement of each kind: the fields its kind takes, and which of them it needs.
fn movement_variant(kind: MovementKind) -> ObjectBuilder {
    let (qty, description) = match kind {
        MovementKind::Receipt => (
            reference::<PositiveDecimalSchema>(),
            "Goods in, at a unit cost.",
        ),
        MovementKind::Issue => (
            reference::<PositiveDecimalSchema>(),
            "Goods out, valued by the article's method.",
        ),
        MovementKind::Transfer => (
            reference::<PositiveDecimalSchema>(),
            "Goods (and their value) from `warehouse` to `to_warehouse`.",
        ),
        MovementKind::Count => (
            reference::<DecimalSchema>(),
            "A stock count: the counted quantity becomes the balance (a gain is valued at \
             `unit_cost` when given, else at the current rate).",
        ),
    };
    let mut o = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property("type", one_of([kind.as_str()]))
        .required("type")
        .property("sku", reference::<SkuSchema>())
        .required("sku")
        .property("warehouse", reference::<WarehouseCodeSchema>())
        .required("warehouse")
        .property("qty", qty)
        .required("qty");
    match kind {
        MovementKind::Receipt => {
            o = o
                .property("unit_cost", reference::<DecimalSchema>())
                .required("unit_cost");
        }
        MovementKind::Count => {
            o = o.property("unit_cost", nullable(reference::<DecimalSchema>()));
        }
        MovementKind::Transfer => {
            o = o
                .property(
                    "to_warehouse",
                    object(code(
                        WAREHOUSE_CODE_MAX,
                        "The destination: another warehouse than `warehouse`.",
                        "EAST",
                    )),
                )
                .required("to_warehouse");
        }
        MovementKind::Issue => {}
    }
    o.property(
        "reference",
        nullable(object(
            text(REFERENCE_MAX, false).description(Some("External reference (order number, ...).")),
        )),
    )
    .property("note", nullable(object(text(NOTE_MAX, false))))
    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

macro_rules! movement_schema {
    ($ty:ident, $name:literal, $kind:expr) => {
        schema!(
            /// One kind of movement (`NewMovement::from_text`).
            $ty,
            $name,
            movement_variant($kind)
        );
    };
}

movement_schema!(ReceiptIn, "ReceiptIn", MovementKind::Receipt);
movement_schema!(IssueIn, "IssueIn", MovementKind::Issue);
movement_schema!(TransferIn, "TransferIn", MovementKind::Transfer);
movement_schema!(CountIn, "CountIn", MovementKind::Count);

fn variant_name(kind: MovementKind) -> Cow<'static, str> {
    match kind {
        MovementKind::Receipt => ReceiptIn::name(),
        MovementKind::Issue => IssueIn::name(),
        MovementKind::Transfer => TransferIn::name(),
        MovementKind::Count => CountIn::name(),
    }
}

impl PartialSchema for crate::input::MovementIn {
    fn schema() -> RefOr<Schema> {
        let mut discriminator = Discriminator::new("type");
        let mut one = OneOfBuilder::new().description(Some(
            "One stock movement; its `type` decides the fields it takes.",
        ));
        for kind in MovementKind::ALL {
            let name = variant_name(kind);
            discriminator.mapping.insert(
                kind.as_str().to_owned(),
                format!("#/components/schemas/{name}"),
            );
            one = one.item(Ref::from_schema_name(name));
        }
        RefOr::T(Schema::OneOf(
            one.discriminator(Some(discriminator)).build(),
        ))
    }
}

impl ToSchema for crate::input::MovementIn {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("MovementIn")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (ReceiptIn::name(), ReceiptIn::schema()),
            (IssueIn::name(), IssueIn::schema()),
            (TransferIn::name(), TransferIn::schema()),
            (CountIn::name(), CountIn::schema()),
            (SkuSchema::name(), SkuSchema::schema()),
            (WarehouseCodeSchema::name(), WarehouseCodeSchema::schema()),
            (DecimalSchema::name(), DecimalSchema::schema()),
            (
                PositiveDecimalSchema::name(),
                PositiveDecimalSchema::schema(),
            ),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}

/// `POST /movements/batch`'s `movements`: 1 to [`MAX_BATCH`] movements.
pub(crate) fn batch_movements() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(reference::<crate::input::MovementIn>())
        .min_items(Some(1))
        .max_items(Some(MAX_BATCH))
}

schema!(
    /// `auth::Role`.
    RoleSchema,
    "Role",
    one_of(crate::auth::Role::ALL.map(crate::auth::Role::as_str))
);
schema!(
    /// `auth::Permission`.
    PermissionSchema,
    "Permission",
    one_of(crate::auth::Permission::ALL.map(crate::auth::Permission::as_str))
);
schema!(
    /// A token's name (`auth::check_name`).
    TokenNameSchema,
    "TokenName",
    text(crate::auth::MAX_NAME_CHARS, true)
);
schema!(
    /// An alert's state: open until its level is back to NORMAL.
    AlertStateSchema,
    "AlertState",
    one_of(["open", "closed"])
);
schema!(
    /// A page position that is a record id above 0 (`before` of alerts and jobs).
    PositiveIdSchema,
    "PositiveId",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
);
schema!(
    /// `GET /ws`'s `since`: a message id.
    SinceSchema,
    "Since",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
);
schema!(
    /// `GET /ws`'s `types`: live message types, comma-separated.
    LiveTypesSchema,
    "LiveTypes",
    comma_list(crate::live::hub::TYPES)
);
schema!(
    /// `malaka_jobs::JobState`.
    JobStateSchema,
    "JobState",
    one_of(malaka_jobs::JobState::ALL.map(malaka_jobs::JobState::as_str))
);
schema!(
    /// `GET /jobs`'s `state`: job states, comma-separated.
    JobStatesSchema,
    "JobStates",
    comma_list(malaka_jobs::JobState::ALL.map(malaka_jobs::JobState::as_str))
);
schema!(
    /// `malaka_reports::Format`.
    ReportFormatSchema,
    "ReportFormat",
    one_of(malaka_reports::Format::ALL.map(malaka_reports::Format::as_str))
);
schema!(
    /// `malaka_reports::ReportState`.
    ReportStateSchema,
    "ReportState",
    one_of(malaka_reports::ReportState::ALL.map(malaka_reports::ReportState::as_str))
);
schema!(
    /// `live::deliveries::FailureState`.
    FailureStateSchema,
    "FailureState",
    one_of(
        crate::live::deliveries::FailureState::ALL
            .map(crate::live::deliveries::FailureState::as_str)
    )
);
schema!(
    /// `malaka_notify::Channel`.
    ChannelSchema,
    "Channel",
    one_of(malaka_notify::Channel::ALL.map(|c| c.as_str()))
);
schema!(
    /// What a notification rule sends on (`malaka_notify::rules::EVENTS`).
    RuleEventSchema,
    "RuleEvent",
    one_of(malaka_notify::rules::EVENTS)
);

fn date_time() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

schema!(
    /// A report's parameters (`malaka_reports::StoredParams::parse`).
    ReportParamsSchema,
    "ReportParams",
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("What to report on; `from` must not be after `to`."))
        .property("sku", nullable(reference::<SkuSchema>()))
        .property("warehouse", nullable(reference::<WarehouseCodeSchema>()))
        .property(
            "from",
            nullable(object(
                date_time().description(Some("Ledger: posted at or after"))
            )),
        )
        .property(
            "to",
            nullable(object(date_time().description(Some("Ledger: posted before")))),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
);

/// `malaka_notify::NewRule::parse`'s limits.
fn rule_fields(o: ObjectBuilder) -> ObjectBuilder {
    use malaka_notify::rules::{LIST_ENTRY_MAX, LIST_MAX, RULE_NAME_MAX};
    let list = |what: &str| {
        nullable(RefOr::T(Schema::Array(
            ArrayBuilder::new()
                .items(object(
                    string()
                        .min_length(Some(1))
                        .max_length(Some(LIST_ENTRY_MAX)),
                ))
                .max_items(Some(LIST_MAX))
                .description(Some(format!("Only these {what} (default: all)")))
                .build(),
        )))
    };
    o.property(
        "name",
        nullable(object(
            text(RULE_NAME_MAX, true).description(Some("Default: the address or the URL's origin")),
        )),
    )
    .property("warehouses", list("warehouses"))
    .property("skus", list("articles"))
    .property(
        "min_level",
        nullable(object(
            one_of(
                AlertLevel::ALL
                    .into_iter()
                    .filter(|l| l.is_alert())
                    .map(AlertLevel::as_str),
            )
            .description(Some("The lowest level that notifies (default LOW)")),
        )),
    )
    .property(
        "events",
        nullable(RefOr::T(Schema::Array(
            ArrayBuilder::new()
                .items(reference::<RuleEventSchema>())
                .min_items(Some(1))
                .description(Some("Default: stock_alert"))
                .build(),
        ))),
    )
    .property(
        "enabled",
        nullable(object(ObjectBuilder::new().schema_type(Type::Boolean))),
    )
    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

fn email() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
}

/// The URLs a webhook takes: http or https, with a host.
fn webhook_url() -> ObjectBuilder {
    string()
        .pattern(Some(malaka_notify::rules::URL_PATTERN))
        .description(Some(
            "An http:// or https:// URL with a host; one naming a loopback, private, \
             link-local or unique-local address literally is refused unless the server allows \
             private targets.",
        ))
        .examples(["https://hooks.example.com/malaka"])
}

fn webhook_secret() -> ObjectBuilder {
    use malaka_notify::rules::{SECRET_MAX, SECRET_MIN, SECRET_PATTERN};
    string()
        .min_length(Some(SECRET_MIN))
        .max_length(Some(SECRET_MAX))
        .pattern(Some(SECRET_PATTERN))
        .description(Some("Signs each delivery (HMAC-SHA256)"))
}

schema!(
    /// An email rule.
    EmailRuleIn,
    "EmailRuleIn",
    rule_fields(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("channel", one_of(["email"]))
            .required("channel")
            .property("address", email())
            .required("address")
    )
);
schema!(
    /// A webhook rule.
    WebhookRuleIn,
    "WebhookRuleIn",
    rule_fields(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("channel", one_of(["webhook"]))
            .required("channel")
            .property("url", webhook_url())
            .required("url")
            .property("secret", webhook_secret())
            .required("secret")
    )
);

/// `POST /notification-rules`: an email or a webhook rule.
#[derive(Debug)]
pub(crate) struct RuleInSchema;

impl PartialSchema for RuleInSchema {
    fn schema() -> RefOr<Schema> {
        let mut discriminator = Discriminator::new("channel");
        for (channel, name) in [
            ("email", EmailRuleIn::name()),
            ("webhook", WebhookRuleIn::name()),
        ] {
            discriminator
                .mapping
                .insert(channel.to_owned(), format!("#/components/schemas/{name}"));
        }
        RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .item(reference::<EmailRuleIn>())
                .item(reference::<WebhookRuleIn>())
                .discriminator(Some(discriminator))
                .build(),
        ))
    }
}

impl ToSchema for RuleInSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RuleIn")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (EmailRuleIn::name(), EmailRuleIn::schema()),
            (WebhookRuleIn::name(), WebhookRuleIn::schema()),
            (RuleEventSchema::name(), RuleEventSchema::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}

schema!(
    /// `PATCH /notification-rules/{id}`: the fields to change (`NewRule::patched`).
    RulePatchSchema,
    "RulePatch",
    rule_fields(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The fields to change. `channel`, when given, must be the rule's own; \
                 `address` is for email rules, `url` and `secret` for webhooks.",
            ))
            .property("channel", nullable(reference::<ChannelSchema>()))
            .property("address", nullable(object(email())))
            .property("url", nullable(object(webhook_url())))
            .property("secret", nullable(object(webhook_secret())))
    )
);

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::schema::Schema;

    /// The pattern of a schema type (a string schema).
    fn pattern<T: PartialSchema>() -> String {
        match T::schema() {
            RefOr::T(Schema::Object(o)) => o.pattern.unwrap(),
            _ => panic!("not a string schema"),
        }
    }

    fn matches(pattern: &str, s: &str) -> bool {
        regex_lite::Regex::new(pattern).unwrap().is_match(s)
    }

    #[test]
    fn cursors_parse_what_their_patterns_match() {
        let balance = pattern::<BalanceCursorSchema>();
        let long_sku = format!("{}/W", "s".repeat(SKU_MAX + 1));
        for s in [
            "A/W",
            "a.b-c_d/MAIN",
            "A",
            "A/",
            "/W",
            "A/W/X",
            "A B/W",
            &long_sku,
        ] {
            assert_eq!(
                malaka_inventory::BalanceCursor::parse(s).is_ok(),
                matches(&balance, s),
                "{s:?}"
            );
        }
        let ledger = pattern::<CursorSchema>();
        for s in [
            "0",
            "42",
            "1700000000000000000.7",
            "",
            "-1",
            "1.",
            ".1",
            "a",
            "1.2.3",
        ] {
            assert_eq!(
                malaka_inventory::LedgerCursor::parse(s).is_ok(),
                matches(&ledger, s),
                "{s:?}"
            );
        }
    }

    #[test]
    fn idempotency_keys_and_text_filters() {
        let key = pattern::<IdempotencyKeySchema>();
        for (s, ok) in [("k-1", true), ("a b", false), ("é", false), ("", false)] {
            assert_eq!(matches(&key, s), ok, "{s:?}");
        }
        let filter = pattern::<TextFilterSchema>();
        assert!(matches(&filter, "any text, é"));
        assert!(!matches(&filter, "a\0b"));
    }

    #[test]
    fn webhook_urls_matching_the_pattern_are_taken() {
        let url = malaka_notify::rules::URL_PATTERN;
        for s in [
            "http://a",
            "https://hooks.example.com/malaka",
            "http://x-1.y:8080/a/b.c~d",
        ] {
            assert!(matches(url, s), "{s:?}");
            assert!(
                reqwest::Url::parse(s).is_ok_and(|u| u.host_str().is_some()),
                "{s:?}"
            );
        }
        for s in ["ftp://a", "http://", "http://1.2.3.4", "http://a b"] {
            assert!(!matches(url, s), "{s:?}");
        }
    }
}
