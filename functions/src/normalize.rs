//! Identifier normalizers and guards (functions.md §A): `phone_e164`, `email_canonical`,
//! `id_clean`, `identifier_hash`. NULL in gives NULL out; an unusable configuration
//! argument (policy, mode, algorithm) is an error (SQLSTATE 22023).

use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use rlibphonenumber::{PhoneNumber, PhoneNumberFormat, Region};
use sha2::Digest;
use unicode_normalization::UnicodeNormalization;

use crate::args::map_text;
use crate::error::invalid;

type TextRow = fn(&[Option<&str>]) -> Result<Option<String>>;

/// A scalar function from text arguments to text.
#[derive(Debug)]
struct TextFn {
    name: &'static str,
    signature: Signature,
    f: TextRow,
}

impl PartialEq for TextFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for TextFn {}
impl std::hash::Hash for TextFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for TextFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        map_text(&args.args, args.number_rows, self.f)
    }
}

fn text_fn(name: &'static str, arities: &[usize], f: TextRow) -> ScalarUDF {
    let sig = Signature::one_of(
        arities.iter().map(|n| TypeSignature::String(*n)).collect(),
        Volatility::Immutable,
    );
    ScalarUDF::from(TextFn {
        name,
        signature: sig,
        f,
    })
}

/// The functions of this module.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        text_fn("phone_e164", &[1, 2, 3], |a| {
            phone_e164(
                a[0],
                a.get(1).copied().flatten(),
                a.get(2).copied().unwrap_or(Some("valid")),
            )
        }),
        text_fn("email_canonical", &[1, 2], |a| {
            email_canonical(a[0], a.get(1).copied().unwrap_or(Some("standard")))
        }),
        text_fn("id_clean", &[2, 3], |a| {
            Ok(id_clean(a[0], a[1], a.get(2).copied().flatten()))
        }),
        text_fn("identifier_hash", &[2, 3], |a| {
            identifier_hash(a[0], a[1], a.get(2).copied().unwrap_or(Some("sha256")))
        }),
    ]
}

/// `phone_e164(raw, default_region, policy)`: the number in E.164 (`+8613800138000`),
/// or NULL if it does not parse, or (policy `valid`, the default) is not a valid number,
/// or (policy `possible`) does not have a possible length; `lenient` accepts any parse.
/// Parsing and validation are libphonenumber's (the `rlibphonenumber` port, metadata
/// 9.0.42): a number written with `+<country code>` or an international prefix ignores
/// the default region, a national prefix is removed, full-width digits are read.
pub fn phone_e164(
    raw: Option<&str>,
    region: Option<&str>,
    policy: Option<&str>,
) -> Result<Option<String>> {
    // Checked without allocating: this runs once per row of an ingest mapping.
    #[derive(PartialEq)]
    enum Policy {
        Valid,
        Possible,
        Lenient,
    }
    let policy = match policy.map(str::trim) {
        Some(p) if p.eq_ignore_ascii_case("valid") => Policy::Valid,
        Some(p) if p.eq_ignore_ascii_case("possible") => Policy::Possible,
        Some(p) if p.eq_ignore_ascii_case("lenient") => Policy::Lenient,
        Some(p) => {
            return Err(invalid(
                "phone_e164",
                format!(
                    "unknown policy '{}' (valid, possible, lenient)",
                    p.to_ascii_lowercase()
                ),
            ));
        }
        None => return Err(invalid("phone_e164", "policy must not be NULL")),
    };
    let Some(raw) = raw else { return Ok(None) };
    let country = match region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => {
            let mut upper = [0u8; 8];
            let parsed = (r.len() <= upper.len())
                .then(|| {
                    upper[..r.len()].copy_from_slice(r.as_bytes());
                    upper[..r.len()].make_ascii_uppercase();
                    std::str::from_utf8(&upper[..r.len()])
                        .ok()?
                        .parse::<Region>()
                        .ok()
                })
                .flatten();
            match parsed {
                Some(id) => Some(id),
                None => {
                    return Err(invalid(
                        "phone_e164",
                        format!("unknown region '{r}' (an ISO 3166 code such as CN, US, GB)"),
                    ));
                }
            }
        }
        None => None,
    };
    let Ok(number) = PhoneNumber::parse(raw, country) else {
        return Ok(None);
    };
    let keep = match policy {
        Policy::Valid => number.is_valid(),
        Policy::Possible => number.is_possible_with_reason().is_ok(),
        Policy::Lenient => true,
    };
    if !keep {
        return Ok(None);
    }
    Ok(Some(number.format_as(PhoneNumberFormat::E164).into_owned()))
}

/// Domains email-validator refuses as special-use (RFC 6761 and IANA).
const SPECIAL_USE: &[&str] = &["arpa", "invalid", "local", "localhost", "onion", "test"];

fn atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+/=?^_`{|}~-".contains(c)
        || (!c.is_ascii() && c.is_alphanumeric())
}

/// `email_canonical(raw, mode)`: trimmed, NFC, syntax-checked (NULL if invalid), domain
/// lower-cased and IDNA-encoded (A-labels). `standard` (the default) also lower-cases the
/// local part; `provider` additionally removes dots and `+tags` for gmail.com and maps
/// googlemail.com to gmail.com; `strip_plus` removes `+tags` for every domain.
pub fn email_canonical(raw: Option<&str>, mode: Option<&str>) -> Result<Option<String>> {
    // Checked without allocating: this runs once per row of an ingest mapping.
    enum Mode {
        Standard,
        Provider,
        StripPlus,
    }
    let mode = match mode.map(str::trim) {
        Some(m) if m.eq_ignore_ascii_case("standard") => Mode::Standard,
        Some(m) if m.eq_ignore_ascii_case("provider") => Mode::Provider,
        Some(m) if m.eq_ignore_ascii_case("strip_plus") => Mode::StripPlus,
        Some(m) => {
            return Err(invalid(
                "email_canonical",
                format!(
                    "unknown mode '{}' (standard, provider, strip_plus)",
                    m.to_ascii_lowercase()
                ),
            ));
        }
        None => return Err(invalid("email_canonical", "mode must not be NULL")),
    };
    let Some(raw) = raw else { return Ok(None) };
    let s: String = raw.trim().nfc().collect();
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Ok(None);
    };
    if local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Ok(None);
    }
    if !local.chars().all(|c| c == '.' || atext(c)) {
        return Ok(None);
    }
    if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
        return Ok(None);
    }
    let Ok(ascii) = idna::domain_to_ascii(domain) else {
        return Ok(None);
    };
    let labels: Vec<&str> = ascii.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) || ascii.len() > 253 {
        return Ok(None);
    }
    if !ascii.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Ok(None);
    }
    if SPECIAL_USE.iter().any(|s| {
        ascii
            .strip_suffix(*s)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    }) {
        return Ok(None);
    }
    let mut local = local.to_lowercase();
    let mut domain = ascii;
    let strip_tag = |l: &str| l.split('+').next().unwrap_or(l).to_string();
    match mode {
        Mode::Provider if domain == "gmail.com" || domain == "googlemail.com" => {
            local = strip_tag(&local).replace('.', "");
            domain = "gmail.com".into();
        }
        Mode::StripPlus => local = strip_tag(&local),
        _ => {}
    }
    if local.is_empty() {
        return Ok(None);
    }
    let email = format!("{local}@{domain}");
    Ok((email.len() <= 254).then_some(email))
}

/// Placeholder values that identify nobody (case-insensitive, after trimming): Segment's
/// and RudderStack's defaults plus common junk.
const BLOCKED: &[&str] = &[
    "-1",
    "null",
    "anonymous",
    "unknown",
    "nan",
    "undefined",
    "none",
    "n/a",
    "na",
    "nil",
    "test@test.com",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "test",
    "guest",
    "default",
];

/// All zeros and dashes (or empty): `^[0\-]*$`.
fn zeros(v: &str) -> bool {
    v.bytes().all(|b| b == b'0' || b == b'-')
}

/// The shape of an e-mail address: `^[^@\s]+@[^@\s]+\.[^@\s]+$`.
fn email_shape(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else {
        return false;
    };
    let plain = |s: &str| !s.is_empty() && !s.contains('@') && !s.chars().any(char::is_whitespace);
    // A dot with something on both sides (the dot is one byte).
    plain(local)
        && plain(domain)
        && domain
            .bytes()
            .enumerate()
            .any(|(i, b)| b == b'.' && i > 0 && i + 1 < domain.len())
}

/// Digits only, with an optional leading `+`: `^\+?[0-9]+$`.
fn digits_only(v: &str) -> bool {
    let d = v.strip_prefix('+').unwrap_or(v);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

/// `id_clean(id_type, value [, extra_blocklist])`: the trimmed value, or NULL if it is a
/// placeholder (all zeros/dashes, `-1`, `null`, `anonymous`, `unknown`, …, or one of the
/// comma-separated `extra_blocklist` values), or does not have the shape of its type
/// (`email` needs `x@y.z`; `phone` needs at least 5 digits and not one digit repeated).
pub fn id_clean(id_type: Option<&str>, value: Option<&str>, extra: Option<&str>) -> Option<String> {
    let v = value?.trim();
    // Case-insensitive in ASCII: no other character lowercases to a letter of the list
    // but the Kelvin sign (to `k`, in none of its words).
    if zeros(v) || BLOCKED.iter().any(|b| b.eq_ignore_ascii_case(v)) {
        return None;
    }
    if let Some(extra) = extra
        && extra.split(',').any(|b| b.trim().eq_ignore_ascii_case(v))
    {
        return None;
    }
    match id_type.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
        Some("email") if !email_shape(v) => return None,
        Some("phone") => {
            let mut digits = v.bytes().filter(u8::is_ascii_digit);
            let first = digits.next();
            if v.bytes().filter(u8::is_ascii_digit).count() < 5 {
                return None;
            }
            if digits_only(v) && digits.all(|d| Some(d) == first) {
                return None;
            }
        }
        _ => {}
    }
    Some(v.to_string())
}

/// `identifier_hash(id_type, value [, algo])`: hex digest of `id_type || ':' || value`
/// (`sha256`, the default, or `sha512`), for privacy-safe joins and audience exports.
pub fn identifier_hash(
    id_type: Option<&str>,
    value: Option<&str>,
    algo: Option<&str>,
) -> Result<Option<String>> {
    let algo = match algo.map(|a| a.trim().to_ascii_lowercase()) {
        Some(a) if a == "sha256" || a == "sha512" => a,
        Some(a) => {
            return Err(invalid(
                "identifier_hash",
                format!("unknown algorithm '{a}' (sha256, sha512)"),
            ));
        }
        None => return Err(invalid("identifier_hash", "algorithm must not be NULL")),
    };
    let (Some(t), Some(v)) = (id_type, value) else {
        return Ok(None);
    };
    let input = format!("{t}:{v}");
    Ok(Some(if algo == "sha256" {
        hex::encode(sha2::Sha256::digest(input.as_bytes()))
    } else {
        hex::encode(sha2::Sha512::digest(input.as_bytes()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn shape_checks_equal_their_regexes() {
        let zeros_re = Regex::new(r"^[0\-]*$").unwrap();
        let email_re = Regex::new(r"^[^@\s]+@[^@\s]+\.[^@\s]+$").unwrap();
        let digits_re = Regex::new(r"^\+?[0-9]+$").unwrap();
        // Every string of up to 5 characters over an alphabet of the characters that
        // matter (and a non-ASCII space and letter).
        let alphabet = ['0', '-', '@', '.', 'a', ' ', '+', '7', '\u{3000}', 'é'];
        let mut cases = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = vec![];
            for s in &frontier {
                for c in alphabet {
                    next.push(format!("{s}{c}"));
                }
            }
            cases.extend(next.iter().cloned());
            frontier = next;
        }
        for v in &cases {
            assert_eq!(zeros(v), zeros_re.is_match(v), "{v:?}");
            assert_eq!(email_shape(v), email_re.is_match(v), "{v:?}");
            assert_eq!(digits_only(v), digits_re.is_match(v), "{v:?}");
        }
        assert!(cases.len() > 100_000);
    }

    #[test]
    fn phones_normalize() {
        let p = |raw, region| phone_e164(Some(raw), region, Some("valid")).unwrap();
        assert_eq!(
            p("138 0013 8000", Some("CN")).as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            p("+86 138-0013-8000", None).as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(
            p("１３８００１３８０００", Some("CN")).as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(p("13800138000", None), None);
        assert_eq!(p("not a phone", Some("CN")), None);
        assert!(phone_e164(Some("1"), None, Some("sometimes")).is_err());
    }

    #[test]
    fn emails_normalize() {
        let e = |raw, mode| email_canonical(Some(raw), Some(mode)).unwrap();
        assert_eq!(
            e("  Foo.Bar@Example.COM ", "standard").as_deref(),
            Some("foo.bar@example.com")
        );
        assert_eq!(
            e("F.o.o+news@googlemail.com", "provider").as_deref(),
            Some("foo@gmail.com")
        );
        assert_eq!(e("a+b@x.org", "strip_plus").as_deref(), Some("a@x.org"));
        assert_eq!(
            e("user@bücher.de", "standard").as_deref(),
            Some("user@xn--bcher-kva.de")
        );
        assert_eq!(e("no-at-sign", "standard"), None);
        assert_eq!(e("a..b@x.org", "standard"), None);
        assert_eq!(e("a@localhost", "standard"), None);
    }

    #[test]
    fn junk_ids_are_cleaned() {
        assert_eq!(id_clean(Some("phone"), Some("00000000000"), None), None);
        assert_eq!(id_clean(Some("user_id"), Some(" NULL "), None), None);
        assert_eq!(id_clean(Some("email"), Some("test@test.com"), None), None);
        assert_eq!(id_clean(Some("email"), Some("not-an-email"), None), None);
        assert_eq!(id_clean(Some("phone"), Some("11111111111"), None), None);
        assert_eq!(
            id_clean(
                Some("device_id"),
                Some("tablet-01"),
                Some("tablet-01,kiosk")
            ),
            None
        );
        assert_eq!(
            id_clean(Some("member_id"), Some(" M001 "), None).as_deref(),
            Some("M001")
        );
    }

    #[test]
    fn hashes_are_hex_sha256() {
        let h = identifier_hash(Some("email"), Some("a@b.co"), Some("sha256"))
            .unwrap()
            .unwrap();
        assert_eq!(h, hex::encode(sha2::Sha256::digest(b"email:a@b.co")));
        assert_eq!(
            identifier_hash(Some("email"), None, Some("sha256")).unwrap(),
            None
        );
        assert!(identifier_hash(Some("e"), Some("v"), Some("md4")).is_err());
    }
}
