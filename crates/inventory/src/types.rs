//! Domain values parsed once at the edge (`Sku`, `WarehouseCode`, `Quantity`, `Money`) and the
//! records the ledger is made of.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::error::InventoryError;

/// Decimal places kept for quantities.
pub const QTY_SCALE: u32 = 6;
/// Decimal places kept for money (values and rates).
pub const MONEY_SCALE: u32 = 6;
/// Quantities (of a movement, a count, a minimum, and of every balance) stay below this:
/// 10^12.
pub const MAX_QTY: Decimal = rust_decimal::dec!(1_000_000_000_000);
/// Unit costs (and every valuation rate) stay below this: 10^12.
pub const MAX_UNIT_COST: Decimal = rust_decimal::dec!(1_000_000_000_000);
/// The value of a balance, and of one movement, stays below this in magnitude: 10^16. With
/// quantities below 10^12 every intermediate product (quantity x value) stays inside `Decimal`'s
/// range of about 7.9 x 10^28, so no valuation can overflow.
pub const MAX_VALUE: Decimal = rust_decimal::dec!(10_000_000_000_000_000);
/// Longest text accepted for one decimal input.
pub const MAX_DECIMAL_TEXT: usize = 64;

// The rules of the parsers below as patterns (ECMA-262 and Rust `regex` alike), for the API's
// schemas: a value matching its pattern (and its length limit) parses; see the tests.

/// A SKU or warehouse code: ASCII letters, digits, `-`, `_` and `.` (see [`Sku::parse`]).
pub const CODE_PATTERN: &str = "^[A-Za-z0-9._-]+$";
/// Longest SKU.
pub const SKU_MAX: usize = 64;
/// Longest warehouse code.
pub const WAREHOUSE_CODE_MAX: usize = 32;
/// Longest article or warehouse name.
pub const NAME_MAX: usize = 200;
/// Longest unit of measure.
pub const UNIT_MAX: usize = 20;
/// Longest movement reference.
pub const REFERENCE_MAX: usize = 100;
/// Longest movement note.
pub const NOTE_MAX: usize = 1000;
/// Text that must say something: no control character, and at least one character that is
/// not white space (it is trimmed).
pub const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";
/// Text that may be empty: no control character.
pub const OPTIONAL_TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// A decimal at or above 0 as [`parse_decimal`] and [`Quantity::parse`] take it, without an
/// exponent: at most 12 integer digits and [`QTY_SCALE`] decimal places (trailing zeros aside).
pub const NON_NEGATIVE_DECIMAL_PATTERN: &str =
    r"^(-0(\.0+)?|(0|[1-9][0-9]{0,11})(\.[0-9]{1,6}0*)?)$";
/// A decimal above 0 (a positive [`Quantity`]), as [`NON_NEGATIVE_DECIMAL_PATTERN`].
pub const POSITIVE_DECIMAL_PATTERN: &str = r"^([1-9][0-9]{0,11}(\.[0-9]{1,6}0*)?|0\.([1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}|0000[1-9][0-9]?|00000[1-9])0*)$";

fn invalid(field: &str, message: impl Into<String>) -> InventoryError {
    InventoryError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn out_of_range(field: &str, message: impl Into<String>) -> InventoryError {
    InventoryError::OutOfRange {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Parses a decimal given as text: a JSON number's own text, or a JSON string holding one. One
/// grammar for both, the JSON number's: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`, no
/// spaces. The value is exact: at most [`QTY_SCALE`] decimal places once trailing zeros are
/// dropped (more is refused, never rounded) and below 10^12 in magnitude; beyond either, or
/// longer than [`MAX_DECIMAL_TEXT`], is `OutOfRange`; anything else that is not a number is
/// `Invalid`. Both name `field`.
///
/// # Errors
/// See above.
pub fn parse_decimal(field: &str, text: &str) -> Result<Decimal, InventoryError> {
    if text.len() > MAX_DECIMAL_TEXT {
        return Err(out_of_range(
            field,
            format!("{field} is longer than {MAX_DECIMAL_TEXT} characters"),
        ));
    }
    let not_a_number = || {
        invalid(
            field,
            format!("{field} must be a decimal number such as 12.5, not {text:?}"),
        )
    };
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let digits_from = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let int_start = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_from(i),
        _ => return Err(not_a_number()),
    }
    let int = &text[int_start..i];
    let mut frac = "";
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = digits_from(start);
        if i == start {
            return Err(not_a_number());
        }
        frac = &text[start..i];
    }
    let mut exp: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let sign = match b.get(i) {
            Some(b'-') => {
                i += 1;
                -1
            }
            Some(b'+') => {
                i += 1;
                1
            }
            _ => 1,
        };
        let start = i;
        i = digits_from(start);
        if i == start {
            return Err(not_a_number());
        }
        // At most 64 characters in all, so this fits.
        exp = sign * text[start..i].parse::<i64>().map_err(|_| not_a_number())?;
    }
    if i != b.len() {
        return Err(not_a_number());
    }
    // The value is `digits` x 10^-scale.
    let digits: String = int.chars().chain(frac.chars()).collect();
    let digits = digits.trim_start_matches('0');
    let mut scale = i64::try_from(frac.len()).map_err(|_| not_a_number())? - exp;
    let mut digits = digits.to_owned();
    if digits.is_empty() {
        return Ok(Decimal::ZERO);
    }
    let int_digits = i64::try_from(digits.len()).map_err(|_| not_a_number())? - scale;
    if int_digits > 12 {
        return Err(out_of_range(
            field,
            format!("{field} must be less than 10^12 in magnitude"),
        ));
    }
    while scale > 0 && digits.ends_with('0') {
        digits.pop();
        scale -= 1;
    }
    if scale > i64::from(QTY_SCALE) {
        return Err(out_of_range(
            field,
            format!("{field} has more than {QTY_SCALE} decimal places"),
        ));
    }
    if scale < 0 {
        digits.extend(std::iter::repeat_n(
            '0',
            usize::try_from(-scale).unwrap_or(0),
        ));
        scale = 0;
    }
    // At most 12 integer and 6 decimal digits: fits an i64.
    let mantissa: i64 = digits.parse().map_err(|_| not_a_number())?;
    let scale = u32::try_from(scale).map_err(|_| not_a_number())?;
    let d = Decimal::new(mantissa, scale);
    Ok(if negative { -d } else { d })
}

/// Rounds an amount of money to [`MONEY_SCALE`] places, halves away from zero.
pub fn round_money(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

fn parse_code(field: &str, s: &str, max: usize) -> Result<String, InventoryError> {
    if s.is_empty() || s.len() > max {
        return Err(invalid(
            field,
            format!("{field} must be 1 to {max} characters"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            field,
            format!("{field} may hold only letters, digits, '-', '_' and '.', not {c:?}"),
        ));
    }
    Ok(s.to_owned())
}

/// An article's stock-keeping unit: 1 to 64 ASCII letters, digits, `-`, `_` or `.`;
/// case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    /// Parses a SKU; the error names the field `sku`.
    ///
    /// # Errors
    /// Empty, longer than 64, or a character outside the set.
    pub fn parse(s: &str) -> Result<Self, InventoryError> {
        parse_code("sku", s, SKU_MAX).map(Self)
    }

    /// The SKU.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A warehouse code: 1 to 32 ASCII letters, digits, `-`, `_` or `.`; case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct WarehouseCode(String);

impl WarehouseCode {
    /// Parses a code; the error names `field` (`warehouse`, `to_warehouse` or `code`).
    ///
    /// # Errors
    /// Empty, longer than 32, or a character outside the set.
    pub fn parse_field(field: &str, s: &str) -> Result<Self, InventoryError> {
        parse_code(field, s, WAREHOUSE_CODE_MAX).map(Self)
    }

    /// Parses a code; the error names the field `code`.
    ///
    /// # Errors
    /// See [`Self::parse_field`].
    pub fn parse(s: &str) -> Result<Self, InventoryError> {
        Self::parse_field("code", s)
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WarehouseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A non-negative quantity with at most [`QTY_SCALE`] decimal places, below [`MAX_QTY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(transparent)]
pub struct Quantity(Decimal);

impl Quantity {
    /// Parses a quantity given as a decimal string or number text; `positive` refuses zero.
    ///
    /// # Errors
    /// Not a number, negative (or zero when `positive`), too many decimals, or too large.
    pub fn parse(field: &str, d: Decimal, positive: bool) -> Result<Self, InventoryError> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(invalid(field, format!("{field} must not be negative")));
        }
        if positive && d.is_zero() {
            return Err(invalid(field, format!("{field} must be greater than 0")));
        }
        if d.normalize().scale() > QTY_SCALE {
            return Err(out_of_range(
                field,
                format!("{field} has more than {QTY_SCALE} decimal places"),
            ));
        }
        if d >= MAX_QTY {
            return Err(out_of_range(
                field,
                format!("{field} must be less than 10^12"),
            ));
        }
        Ok(Self(d.normalize()))
    }

    /// Parses a quantity given as text (see [`parse_decimal`]).
    ///
    /// # Errors
    /// As [`parse_decimal`] and [`Self::parse`].
    pub fn parse_text(field: &str, text: &str, positive: bool) -> Result<Self, InventoryError> {
        Self::parse(field, parse_decimal(field, text)?, positive)
    }

    /// The value.
    pub fn get(self) -> Decimal {
        self.0
    }
}

/// A non-negative amount of money (a unit cost) with at most [`MONEY_SCALE`] decimal places,
/// below [`MAX_UNIT_COST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Money(Decimal);

impl Money {
    /// Parses an amount; the error names `field`.
    ///
    /// # Errors
    /// Negative, too many decimals, or too large.
    pub fn parse(field: &str, d: Decimal) -> Result<Self, InventoryError> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(invalid(field, format!("{field} must not be negative")));
        }
        if d.normalize().scale() > MONEY_SCALE {
            return Err(out_of_range(
                field,
                format!("{field} has more than {MONEY_SCALE} decimal places"),
            ));
        }
        if d >= MAX_UNIT_COST {
            return Err(out_of_range(
                field,
                format!("{field} must be less than 10^12"),
            ));
        }
        Ok(Self(d.normalize()))
    }

    /// Parses an amount given as text (see [`parse_decimal`]).
    ///
    /// # Errors
    /// As [`parse_decimal`] and [`Self::parse`].
    pub fn parse_text(field: &str, text: &str) -> Result<Self, InventoryError> {
        Self::parse(field, parse_decimal(field, text)?)
    }

    /// The value.
    pub fn get(self) -> Decimal {
        self.0
    }
}

/// Free text with a length limit (name, unit, reference, note), trimmed; the limit and the
/// refusal of control characters apply to the text as sent ([`TEXT_PATTERN`],
/// [`OPTIONAL_TEXT_PATTERN`]).
pub(crate) fn parse_text(
    field: &str,
    s: &str,
    max: usize,
    required: bool,
) -> Result<String, InventoryError> {
    let t = s.trim();
    if required && t.is_empty() {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if s.chars().count() > max {
        return Err(invalid(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(t.to_owned())
}

/// How an article's stock is valued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ValuationMethod {
    /// Weighted moving average: a receipt re-averages the rate; an issue leaves it.
    #[default]
    MovingAverage,
    /// First in, first out: an issue consumes the oldest receipt layers.
    Fifo,
}

impl ValuationMethod {
    /// Every method.
    pub const ALL: [Self; 2] = [Self::MovingAverage, Self::Fifo];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MovingAverage => "moving_average",
            Self::Fifo => "fifo",
        }
    }
}

impl FromStr for ValuationMethod {
    type Err = InventoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "moving_average" => Ok(Self::MovingAverage),
            "fifo" => Ok(Self::Fifo),
            other => Err(invalid(
                "valuation",
                format!("valuation must be moving_average or fifo, not {other:?}"),
            )),
        }
    }
}

/// Stock alert level of one article in one warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertLevel {
    /// Quantity at or below zero.
    OutOfStock,
    /// At or below half the minimum.
    Critical,
    /// At or below the minimum.
    Low,
    /// Above the minimum.
    Normal,
}

impl AlertLevel {
    /// Every level, the worst first.
    pub const ALL: [Self; 4] = [Self::OutOfStock, Self::Critical, Self::Low, Self::Normal];

    /// The level of `qty` against `min_qty` (an article with `min_qty` 0 is `Normal` while it has
    /// stock).
    pub fn of(qty: Decimal, min_qty: Decimal) -> Self {
        if qty <= Decimal::ZERO {
            Self::OutOfStock
        } else if qty <= min_qty / Decimal::TWO {
            Self::Critical
        } else if qty <= min_qty {
            Self::Low
        } else {
            Self::Normal
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::Critical => "CRITICAL",
            Self::Low => "LOW",
            Self::Normal => "NORMAL",
        }
    }

    /// How bad it is: 0 for `Normal` up to 3 for `OutOfStock`.
    pub fn severity(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Low => 1,
            Self::Critical => 2,
            Self::OutOfStock => 3,
        }
    }

    /// Whether this level calls for attention (anything but `Normal`).
    pub fn is_alert(self) -> bool {
        self != Self::Normal
    }
}

impl FromStr for AlertLevel {
    type Err = InventoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "OUT_OF_STOCK" => Ok(Self::OutOfStock),
            "CRITICAL" => Ok(Self::Critical),
            "LOW" => Ok(Self::Low),
            "NORMAL" => Ok(Self::Normal),
            other => Err(invalid(
                "level",
                format!("level must be OUT_OF_STOCK, CRITICAL, LOW or NORMAL, not {other:?}"),
            )),
        }
    }
}

/// The kinds of stock movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    /// Goods in, at a unit cost.
    Receipt,
    /// Goods out, valued by the article's method.
    Issue,
    /// Goods (and their value) from one warehouse to another.
    Transfer,
    /// A stock count: the counted quantity becomes the balance.
    Count,
}

impl MovementKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Receipt, Self::Issue, Self::Transfer, Self::Count];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Issue => "issue",
            Self::Transfer => "transfer",
            Self::Count => "count",
        }
    }
}

impl FromStr for MovementKind {
    type Err = InventoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "receipt" => Ok(Self::Receipt),
            "issue" => Ok(Self::Issue),
            "transfer" => Ok(Self::Transfer),
            "count" => Ok(Self::Count),
            other => Err(invalid(
                "type",
                format!("type must be receipt, issue, transfer or count, not {other:?}"),
            )),
        }
    }
}

/// An article.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Article {
    /// Stock-keeping unit.
    pub sku: Sku,
    /// Name.
    pub name: String,
    /// Unit of measure (`pcs`, `kg`, ...).
    pub unit: String,
    /// Valuation method (fixed once the article has ledger rows).
    pub valuation: ValuationMethod,
    /// Minimum quantity per warehouse: at or below it the level is `LOW`.
    pub min_qty: Decimal,
    /// Suggested reorder quantity.
    pub reorder_qty: Decimal,
    /// Whether stock may go below zero.
    pub allow_negative: bool,
    /// Archived articles take no new movements.
    pub archived: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A new article, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArticle {
    /// SKU.
    pub sku: Sku,
    /// Name (1 to 200 characters).
    pub name: String,
    /// Unit (1 to 20 characters), default `pcs`.
    pub unit: String,
    /// Valuation method.
    pub valuation: ValuationMethod,
    /// Minimum quantity.
    pub min_qty: Quantity,
    /// Reorder quantity.
    pub reorder_qty: Quantity,
    /// Negative stock allowed.
    pub allow_negative: bool,
}

impl NewArticle {
    /// Parses the parts of a new article.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn parse(
        sku: &str,
        name: &str,
        unit: Option<&str>,
        valuation: Option<&str>,
        min_qty: Option<Decimal>,
        reorder_qty: Option<Decimal>,
        allow_negative: Option<bool>,
    ) -> Result<Self, InventoryError> {
        Ok(Self {
            sku: Sku::parse(sku)?,
            name: parse_text("name", name, NAME_MAX, true)?,
            unit: parse_text("unit", unit.unwrap_or("pcs"), UNIT_MAX, true)?,
            valuation: valuation.map_or(Ok(ValuationMethod::default()), str::parse)?,
            min_qty: Quantity::parse("min_qty", min_qty.unwrap_or_default(), false)?,
            reorder_qty: Quantity::parse("reorder_qty", reorder_qty.unwrap_or_default(), false)?,
            allow_negative: allow_negative.unwrap_or(false),
        })
    }
}

/// Changes to an article; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArticlePatch {
    /// New name.
    pub name: Option<String>,
    /// New unit.
    pub unit: Option<String>,
    /// New valuation method (refused once the article has ledger rows).
    pub valuation: Option<ValuationMethod>,
    /// New minimum quantity (levels are re-evaluated).
    pub min_qty: Option<Quantity>,
    /// New reorder quantity.
    pub reorder_qty: Option<Quantity>,
    /// Allow negative stock.
    pub allow_negative: Option<bool>,
    /// Archive or restore.
    pub archived: Option<bool>,
}

impl ArticlePatch {
    /// Parses the parts of a patch.
    ///
    /// # Errors
    /// The first invalid field.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        name: Option<&str>,
        unit: Option<&str>,
        valuation: Option<&str>,
        min_qty: Option<Decimal>,
        reorder_qty: Option<Decimal>,
        allow_negative: Option<bool>,
        archived: Option<bool>,
    ) -> Result<Self, InventoryError> {
        Ok(Self {
            name: name
                .map(|n| parse_text("name", n, NAME_MAX, true))
                .transpose()?,
            unit: unit
                .map(|u| parse_text("unit", u, UNIT_MAX, true))
                .transpose()?,
            valuation: valuation.map(str::parse).transpose()?,
            min_qty: min_qty
                .map(|q| Quantity::parse("min_qty", q, false))
                .transpose()?,
            reorder_qty: reorder_qty
                .map(|q| Quantity::parse("reorder_qty", q, false))
                .transpose()?,
            allow_negative,
            archived,
        })
    }
}

/// A warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warehouse {
    /// Code.
    pub code: WarehouseCode,
    /// Name.
    pub name: String,
    /// Archived warehouses take no new movements.
    pub archived: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A stock movement to post, parsed: the rules of its kind hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMovement {
    /// Kind.
    pub kind: MovementKind,
    /// Article.
    pub sku: Sku,
    /// Warehouse (the source of a transfer).
    pub warehouse: WarehouseCode,
    /// Destination of a transfer.
    pub to_warehouse: Option<WarehouseCode>,
    /// Quantity moved (receipt, issue, transfer: > 0) or counted (count: >= 0).
    pub qty: Quantity,
    /// Unit cost of a receipt (required) or of a count's positive adjustment (optional).
    pub unit_cost: Option<Money>,
    /// External reference (order number, ...).
    pub reference: Option<String>,
    /// Note.
    pub note: Option<String>,
}

impl NewMovement {
    /// Parses a movement request; the error names the first invalid field.
    ///
    /// # Errors
    /// An invalid field, or a combination its kind does not allow.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        kind: &str,
        sku: &str,
        warehouse: &str,
        to_warehouse: Option<&str>,
        qty: Decimal,
        unit_cost: Option<Decimal>,
        reference: Option<&str>,
        note: Option<&str>,
    ) -> Result<Self, InventoryError> {
        let kind: MovementKind = kind.parse()?;
        let sku = Sku::parse(sku)?;
        let warehouse = WarehouseCode::parse_field("warehouse", warehouse)?;
        let qty = Quantity::parse("qty", qty, kind != MovementKind::Count)?;
        let unit_cost = unit_cost
            .map(|c| Money::parse("unit_cost", c))
            .transpose()?;
        let to_warehouse = match (kind, to_warehouse) {
            (MovementKind::Transfer, Some(t)) => {
                let t = WarehouseCode::parse_field("to_warehouse", t)?;
                if t == warehouse {
                    return Err(invalid(
                        "to_warehouse",
                        "to_warehouse must differ from warehouse",
                    ));
                }
                Some(t)
            }
            (MovementKind::Transfer, None) => {
                return Err(invalid("to_warehouse", "a transfer needs to_warehouse"));
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "to_warehouse",
                    "only a transfer takes to_warehouse",
                ));
            }
            (_, None) => None,
        };
        match (kind, unit_cost) {
            (MovementKind::Receipt, None) => {
                return Err(invalid("unit_cost", "a receipt needs unit_cost"));
            }
            (MovementKind::Issue | MovementKind::Transfer, Some(_)) => {
                return Err(invalid(
                    "unit_cost",
                    "issues and transfers are valued by the article's method; omit unit_cost",
                ));
            }
            _ => {}
        }
        Ok(Self {
            kind,
            sku,
            warehouse,
            to_warehouse,
            qty,
            unit_cost,
            reference: reference
                .map(|r| parse_text("reference", r, REFERENCE_MAX, false))
                .transpose()?
                .filter(|r| !r.is_empty()),
            note: note
                .map(|n| parse_text("note", n, NOTE_MAX, false))
                .transpose()?
                .filter(|n| !n.is_empty()),
        })
    }
}

/// A movement as text, the way every edge (HTTP, SQS, imports) receives one: decimals as the
/// text they were sent as (see [`parse_decimal`]). [`NewMovement::from_text`] parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MovementText<'a> {
    /// `receipt`, `issue`, `transfer` or `count`.
    pub kind: &'a str,
    /// Article.
    pub sku: &'a str,
    /// Warehouse (the source of a transfer).
    pub warehouse: &'a str,
    /// Destination of a transfer.
    pub to_warehouse: Option<&'a str>,
    /// Quantity.
    pub qty: &'a str,
    /// Unit cost.
    pub unit_cost: Option<&'a str>,
    /// Reference.
    pub reference: Option<&'a str>,
    /// Note.
    pub note: Option<&'a str>,
}

impl NewMovement {
    /// Parses a movement given as text: the one parser of every edge. Fields are checked in
    /// order (type, sku, warehouse, qty, unit cost, ...); the error names the first bad one.
    ///
    /// # Errors
    /// An invalid or out-of-range field, or a combination its kind does not allow.
    pub fn from_text(t: &MovementText<'_>) -> Result<Self, InventoryError> {
        let kind: MovementKind = t.kind.parse()?;
        Sku::parse(t.sku)?;
        WarehouseCode::parse_field("warehouse", t.warehouse)?;
        let qty = parse_decimal("qty", t.qty)?;
        let unit_cost = t
            .unit_cost
            .map(|c| parse_decimal("unit_cost", c))
            .transpose()?;
        Self::parse(
            kind.as_str(),
            t.sku,
            t.warehouse,
            t.to_warehouse,
            qty,
            unit_cost,
            t.reference,
            t.note,
        )
    }
}

/// A FIFO layer: a quantity still in stock at the rate it came in at, and when it first came
/// in (a transfer keeps the date; a count gain is a new layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Quantity left in the layer.
    #[serde(with = "rust_decimal::serde::str")]
    pub qty: Decimal,
    /// Its unit cost.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// When its goods were received (the receipt or count that brought them in, not a transfer
    /// that moved them). `None` only for layers stored before dates were kept, and for what
    /// an issue took beyond the stock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// Its place in the balance's FIFO order as stored (`inv_layers.seq`); `None` until the
    /// store gives it one. Not part of the API.
    #[serde(skip)]
    pub(crate) seq: Option<i64>,
}

impl Layer {
    /// A layer of `qty` at `rate`, received `received_at`.
    pub fn new(qty: Decimal, rate: Decimal, received_at: Option<DateTime<Utc>>) -> Self {
        Self {
            qty,
            rate,
            received_at,
            seq: None,
        }
    }
}

/// One append-only ledger row: a signed change of one article in one warehouse and what it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    /// Row id (ascending in posting order).
    pub id: i64,
    /// The movement it belongs to (a transfer has two rows).
    pub movement_id: String,
    /// Movement kind.
    pub kind: MovementKind,
    /// Article.
    pub sku: Sku,
    /// Warehouse.
    pub warehouse: WarehouseCode,
    /// Signed quantity change.
    pub qty_change: Decimal,
    /// Unit cost of the change.
    pub unit_cost: Decimal,
    /// Signed value change.
    pub value_change: Decimal,
    /// Quantity after.
    pub qty_after: Decimal,
    /// Value after.
    pub value_after: Decimal,
    /// Valuation rate after.
    pub rate_after: Decimal,
    /// Reference.
    pub reference: Option<String>,
    /// Who posted it.
    pub posted_by: String,
    /// When.
    pub posted_at: DateTime<Utc>,
}

/// A posted movement with its ledger rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Movement {
    /// Movement id (UUIDv7).
    pub id: String,
    /// Kind.
    pub kind: MovementKind,
    /// Article.
    pub sku: Sku,
    /// Warehouse.
    pub warehouse: WarehouseCode,
    /// Destination of a transfer.
    pub to_warehouse: Option<WarehouseCode>,
    /// Quantity as requested.
    pub qty: Decimal,
    /// Unit cost as requested.
    pub unit_cost: Option<Decimal>,
    /// Reference.
    pub reference: Option<String>,
    /// Note.
    pub note: Option<String>,
    /// Who posted it.
    pub posted_by: String,
    /// When.
    pub posted_at: DateTime<Utc>,
    /// Its ledger rows.
    pub rows: Vec<LedgerRow>,
}

/// The stock of one article in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Article.
    pub sku: Sku,
    /// The article's name.
    pub name: String,
    /// Warehouse.
    pub warehouse: WarehouseCode,
    /// Quantity.
    pub qty: Decimal,
    /// Value.
    pub value: Decimal,
    /// Valuation rate (value per unit).
    pub rate: Decimal,
    /// The article's minimum quantity.
    pub min_qty: Decimal,
    /// Alert level.
    pub level: AlertLevel,
    /// FIFO layers, oldest first (empty for moving average).
    pub layers: Vec<Layer>,
    /// Last posting.
    pub updated_at: DateTime<Utc>,
}

/// Balance filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BalanceFilter {
    /// Only this article.
    pub sku: Option<Sku>,
    /// Only this warehouse.
    pub warehouse: Option<WarehouseCode>,
    /// Only this level.
    pub level: Option<AlertLevel>,
    /// Balances after this (article, warehouse), the cursor of the previous page.
    pub after: Option<BalanceCursor>,
    /// Page size (`None`: every match, for callers inside the process).
    pub limit: Option<u32>,
}

/// Where a page of balances ends: its last (article, warehouse). As text, `SKU/WAREHOUSE` (`/`
/// is in neither).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BalanceCursor {
    /// The article.
    pub sku: Sku,
    /// The warehouse.
    pub warehouse: WarehouseCode,
}

impl BalanceCursor {
    /// Parses the text form.
    ///
    /// # Errors
    /// `Invalid` on field `cursor`.
    pub fn parse(s: &str) -> Result<Self, InventoryError> {
        let bad = || InventoryError::invalid("cursor", "cursor is not valid");
        let (sku, warehouse) = s.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            sku: Sku::parse(sku).map_err(|_| bad())?,
            warehouse: WarehouseCode::parse(warehouse).map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for BalanceCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.sku.as_str(), self.warehouse.as_str())
    }
}

/// Where a page of the ledger ends. Pages filtered by date run in posting-time order (so the
/// time index serves them) and carry the last row's time; the others run in id order.
/// As text, `ID` or `NANOS.ID` (posting time as nanoseconds since 1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerCursor {
    /// The last row's id.
    pub id: i64,
    /// Its posting time, when the page is in time order.
    pub posted_at: Option<DateTime<Utc>>,
}

impl LedgerCursor {
    /// Parses the text form.
    ///
    /// # Errors
    /// `Invalid` on field `cursor`.
    pub fn parse(s: &str) -> Result<Self, InventoryError> {
        let bad = || InventoryError::invalid("cursor", "cursor is not valid");
        let num = |t: &str| t.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad);
        match s.split_once('.') {
            None => Ok(Self {
                id: num(s)?,
                posted_at: None,
            }),
            Some((t, id)) => Ok(Self {
                id: num(id)?,
                posted_at: Some(DateTime::<Utc>::from_timestamp_nanos(num(t)?)),
            }),
        }
    }
}

impl Serialize for LedgerCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for LedgerCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.posted_at.and_then(|t| t.timestamp_nanos_opt()) {
            Some(n) => write!(f, "{n}.{}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

impl LedgerFilter {
    /// Whether pages run in posting-time order: a date filter without an article or warehouse
    /// (with one, that index narrows the rows first).
    pub fn in_time_order(&self) -> bool {
        (self.from.is_some() || self.to.is_some()) && self.sku.is_none() && self.warehouse.is_none()
    }
}

/// Ledger filters and page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerFilter {
    /// Only this article.
    pub sku: Option<Sku>,
    /// Only this warehouse.
    pub warehouse: Option<WarehouseCode>,
    /// Posted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Posted before.
    pub to: Option<DateTime<Utc>>,
    /// Rows after this one (the cursor of the previous page).
    pub after: Option<LedgerCursor>,
    /// Page size (1 to 1000, default 100).
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::dec;

    fn matches(pattern: &str, max: usize, s: &str) -> bool {
        regex_lite::Regex::new(pattern).unwrap().is_match(s) && s.chars().count() <= max
    }

    /// Codes: what matches `CODE_PATTERN` within the length parses, and nothing else does.
    #[test]
    fn codes_parse_exactly_what_their_pattern_matches() {
        let long = "x".repeat(65);
        let samples = [
            "A",
            "AB-12_x.9",
            "...",
            "-",
            "a b",
            "",
            "é",
            "a/b",
            "a\n",
            "\na",
            "x+y",
            &long,
        ];
        for s in samples {
            assert_eq!(
                Sku::parse(s).is_ok(),
                matches(CODE_PATTERN, SKU_MAX, s),
                "sku {s:?}"
            );
            assert_eq!(
                WarehouseCode::parse(s).is_ok(),
                matches(CODE_PATTERN, WAREHOUSE_CODE_MAX, s),
                "code {s:?}"
            );
        }
        assert!(WarehouseCode::parse(&"w".repeat(WAREHOUSE_CODE_MAX)).is_ok());
        assert!(WarehouseCode::parse(&"w".repeat(WAREHOUSE_CODE_MAX + 1)).is_err());
    }

    /// Text: what matches `TEXT_PATTERN` / `OPTIONAL_TEXT_PATTERN` within the length parses,
    /// and nothing else does.
    #[test]
    fn text_parses_exactly_what_its_pattern_matches() {
        let max = "n".repeat(10);
        let over = "n".repeat(11);
        let padded = format!(" {max}");
        let samples = [
            "a",
            " a ",
            "Ünïcødé ✓",
            "",
            " ",
            "\u{3000}\u{a0}",
            "\u{2028}x",
            "a\tb",
            "a\n",
            "\u{85}",
            "\u{7f}x",
            "\u{feff}",
            "\u{200b}",
            &max,
            &over,
            &padded,
        ];
        for s in samples {
            assert_eq!(
                parse_text("f", s, 10, true).is_ok(),
                matches(TEXT_PATTERN, 10, s),
                "required {s:?}"
            );
            assert_eq!(
                parse_text("f", s, 10, false).is_ok(),
                matches(OPTIONAL_TEXT_PATTERN, 10, s),
                "optional {s:?}"
            );
        }
    }

    /// Decimals: every string matching a decimal pattern parses to a value its parser takes;
    /// strings that do not match are refused, except exponent forms (`1e3`), which are taken
    /// (a JSON number's text) and which the pattern leaves out.
    #[test]
    fn decimals_parse_exactly_what_their_pattern_matches() {
        let long = format!("1.{}", "0".repeat(MAX_DECIMAL_TEXT));
        let samples = [
            "0",
            "-0",
            "-0.000",
            "0.0",
            "0.000001",
            "0.0000010",
            "0.0000001",
            "0.10",
            "1",
            "12.5",
            "12.500000000",
            "12.1234567",
            "999999999999.999999",
            "1000000000000",
            "-1",
            "-0.5",
            "01",
            "1.",
            ".5",
            "+1",
            " 1",
            "1 ",
            "1_000",
            "0x10",
            "",
            "NaN",
            &long,
        ];
        let parsed = |s: &str, positive: bool| {
            parse_decimal("q", s)
                .and_then(|d| Quantity::parse("q", d, positive))
                .is_ok()
        };
        for s in samples {
            assert_eq!(
                parsed(s, false),
                matches(NON_NEGATIVE_DECIMAL_PATTERN, MAX_DECIMAL_TEXT, s),
                "{s:?}"
            );
            assert_eq!(
                parsed(s, true),
                matches(POSITIVE_DECIMAL_PATTERN, MAX_DECIMAL_TEXT, s),
                "positive {s:?}"
            );
            let money = parse_decimal("c", s)
                .and_then(|d| Money::parse("c", d))
                .is_ok();
            assert_eq!(
                money,
                matches(NON_NEGATIVE_DECIMAL_PATTERN, MAX_DECIMAL_TEXT, s),
                "money {s:?}"
            );
        }
        // Taken beyond the pattern: a JSON number's exponent form.
        for s in ["1e3", "1.5E+2", "25e-1"] {
            assert!(parsed(s, true), "{s:?}");
            assert!(!matches(NON_NEGATIVE_DECIMAL_PATTERN, MAX_DECIMAL_TEXT, s));
        }
    }

    #[test]
    fn variant_lists_are_complete() {
        for m in ValuationMethod::ALL {
            assert_eq!(m.as_str().parse::<ValuationMethod>().unwrap(), m);
        }
        for l in AlertLevel::ALL {
            assert_eq!(l.as_str().parse::<AlertLevel>().unwrap(), l);
        }
        for k in MovementKind::ALL {
            assert_eq!(k.as_str().parse::<MovementKind>().unwrap(), k);
        }
        // A new variant is a compile error in these matches until it is listed above.
        let _ = |m: ValuationMethod| match m {
            ValuationMethod::MovingAverage | ValuationMethod::Fifo => (),
        };
        let _ = |l: AlertLevel| match l {
            AlertLevel::OutOfStock
            | AlertLevel::Critical
            | AlertLevel::Low
            | AlertLevel::Normal => (),
        };
        let _ = |k: MovementKind| match k {
            MovementKind::Receipt
            | MovementKind::Issue
            | MovementKind::Transfer
            | MovementKind::Count => (),
        };
    }

    #[test]
    fn cursors_read_back_what_they_print() {
        let b = BalanceCursor {
            sku: Sku::parse("G-17").unwrap(),
            warehouse: WarehouseCode::parse("MAIN").unwrap(),
        };
        assert_eq!(b.to_string(), "G-17/MAIN");
        assert_eq!(BalanceCursor::parse(&b.to_string()).unwrap(), b);
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        for c in [
            LedgerCursor {
                id: 42,
                posted_at: None,
            },
            LedgerCursor {
                id: 7,
                posted_at: Some(t),
            },
        ] {
            assert_eq!(LedgerCursor::parse(&c.to_string()).unwrap(), c);
        }
        for bad in ["", "x", "-1", "1.x", "G-17", "a b/MAIN", "1.2.3"] {
            assert!(
                LedgerCursor::parse(bad).is_err() || BalanceCursor::parse(bad).is_err(),
                "{bad}"
            );
        }
        assert!(LedgerCursor::parse("-5").is_err());
        assert!(BalanceCursor::parse("G-17").is_err());
    }

    #[test]
    fn sku_accepts_the_set_and_refuses_the_rest() {
        assert!(Sku::parse("AB-12_x.9").is_ok());
        assert_eq!(Sku::parse("a").unwrap().as_str(), "a");
        assert!(Sku::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            let e = Sku::parse(bad).unwrap_err();
            assert!(
                matches!(e, InventoryError::Invalid { ref field, .. } if field == "sku"),
                "{bad:?}: {e}"
            );
        }
        assert_ne!(
            Sku::parse("abc").unwrap(),
            Sku::parse("ABC").unwrap(),
            "case-sensitive"
        );
    }

    #[test]
    fn decimal_text_is_exact_and_bounded() {
        let ok = |t: &str, d: Decimal| assert_eq!(parse_decimal("qty", t).unwrap(), d, "{t}");
        ok("0", dec!(0));
        ok("-0", dec!(0));
        ok("12", dec!(12));
        ok("12.5", dec!(12.5));
        ok("123456789012.123456", dec!(123456789012.123456));
        ok("999999999999.999999", dec!(999999999999.999999));
        ok("1.5000000000", dec!(1.5)); // trailing zeros are not decimal places
        ok("1e3", dec!(1000));
        ok("1.5E+2", dec!(150));
        ok("15e-1", dec!(1.5));
        ok("0.000001", dec!(0.000001));
        ok("-3.25", dec!(-3.25));
        ok("0e999999", dec!(0));
        let code = |t: &str| match parse_decimal("qty", t) {
            Err(InventoryError::Invalid { field, .. }) => ("invalid", field),
            Err(InventoryError::OutOfRange { field, .. }) => ("out_of_range", field),
            other => panic!("{t}: {other:?}"),
        };
        for bad in [
            "", " 1", "1 ", "+1", "01", "1.", ".5", "1e", "1e+", "--1", "1,5", "0x10", "NaN",
            "Infinity", "1_000", "١", "1.2.3",
        ] {
            assert_eq!(code(bad), ("invalid", "qty".to_owned()), "{bad:?}");
        }
        for far in [
            "0.0000001",
            "1.1234567",
            "1000000000000",
            "1e12",
            "99999999999999999999999999999999",
            "1e300",
            "1e-300",
            &"1".repeat(65),
        ] {
            assert_eq!(code(far), ("out_of_range", "qty".to_owned()), "{far:?}");
        }
    }

    #[test]
    fn movements_from_text_follow_the_same_rules() {
        let t = MovementText {
            kind: "receipt",
            sku: "A",
            warehouse: "W1",
            qty: "123456789012.123456",
            unit_cost: Some("0.5"),
            ..MovementText::default()
        };
        let m = NewMovement::from_text(&t).unwrap();
        assert_eq!(m.qty.get(), dec!(123456789012.123456));
        let field = |t: MovementText<'_>| match NewMovement::from_text(&t) {
            Err(
                InventoryError::Invalid { field, .. } | InventoryError::OutOfRange { field, .. },
            ) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(MovementText { kind: "move", ..t }), "type");
        assert_eq!(
            field(MovementText {
                qty: "1.0000001",
                ..t
            }),
            "qty"
        );
        assert_eq!(
            field(MovementText {
                unit_cost: Some("1e12"),
                ..t
            }),
            "unit_cost"
        );
        assert_eq!(
            field(MovementText {
                unit_cost: None,
                ..t
            }),
            "unit_cost"
        );
        assert_eq!(field(MovementText { sku: "", ..t }), "sku");
    }

    #[test]
    fn quantities_and_money() {
        assert_eq!(
            Quantity::parse("qty", dec!(1.50), true).unwrap().get(),
            dec!(1.5)
        );
        assert!(Quantity::parse("qty", dec!(0), true).is_err());
        assert!(Quantity::parse("qty", dec!(0), false).is_ok());
        assert!(Quantity::parse("qty", dec!(-1), false).is_err());
        assert!(Quantity::parse("qty", dec!(0.0000001), true).is_err());
        assert!(Quantity::parse("qty", dec!(1000000000000), true).is_err());
        assert!(Money::parse("unit_cost", dec!(0)).is_ok());
        assert!(Money::parse("unit_cost", dec!(-0.01)).is_err());
        assert_eq!(round_money(dec!(1.0000005)), dec!(1.000001));
        assert_eq!(round_money(dec!(-1.0000005)), dec!(-1.000001));
    }

    #[test]
    fn alert_levels_follow_the_seeds() {
        let min = dec!(10);
        assert_eq!(AlertLevel::of(dec!(0), min), AlertLevel::OutOfStock);
        assert_eq!(AlertLevel::of(dec!(-3), min), AlertLevel::OutOfStock);
        assert_eq!(AlertLevel::of(dec!(5), min), AlertLevel::Critical);
        assert_eq!(AlertLevel::of(dec!(5.5), min), AlertLevel::Low);
        assert_eq!(AlertLevel::of(dec!(10), min), AlertLevel::Low);
        assert_eq!(AlertLevel::of(dec!(10.1), min), AlertLevel::Normal);
        assert_eq!(AlertLevel::of(dec!(1), dec!(0)), AlertLevel::Normal);
        assert_eq!(AlertLevel::of(dec!(0), dec!(0)), AlertLevel::OutOfStock);
    }

    #[test]
    fn movement_rules_per_kind() {
        let ok = NewMovement::parse(
            "receipt",
            "A",
            "W1",
            None,
            dec!(10),
            Some(dec!(1)),
            Some(" PO-1 "),
            None,
        )
        .unwrap();
        assert_eq!(ok.reference.as_deref(), Some("PO-1"));
        let field = |r: Result<NewMovement, InventoryError>| match r {
            Err(InventoryError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(NewMovement::parse(
                "receipt",
                "A",
                "W1",
                None,
                dec!(10),
                None,
                None,
                None
            )),
            "unit_cost"
        );
        assert_eq!(
            field(NewMovement::parse(
                "issue",
                "A",
                "W1",
                None,
                dec!(10),
                Some(dec!(1)),
                None,
                None
            )),
            "unit_cost"
        );
        assert_eq!(
            field(NewMovement::parse(
                "transfer",
                "A",
                "W1",
                None,
                dec!(1),
                None,
                None,
                None
            )),
            "to_warehouse"
        );
        assert_eq!(
            field(NewMovement::parse(
                "transfer",
                "A",
                "W1",
                Some("W1"),
                dec!(1),
                None,
                None,
                None
            )),
            "to_warehouse"
        );
        assert_eq!(
            field(NewMovement::parse(
                "issue",
                "A",
                "W1",
                Some("W2"),
                dec!(1),
                None,
                None,
                None
            )),
            "to_warehouse"
        );
        assert_eq!(
            field(NewMovement::parse(
                "issue",
                "A",
                "W1",
                None,
                dec!(0),
                None,
                None,
                None
            )),
            "qty"
        );
        assert_eq!(
            field(NewMovement::parse(
                "move",
                "A",
                "W1",
                None,
                dec!(1),
                None,
                None,
                None
            )),
            "type"
        );
        assert_eq!(
            field(NewMovement::parse(
                "issue",
                "A",
                "",
                None,
                dec!(1),
                None,
                None,
                None
            )),
            "warehouse"
        );
        assert!(NewMovement::parse("count", "A", "W1", None, dec!(0), None, None, None).is_ok());
    }
}
