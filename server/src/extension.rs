//! Touchlake's own statements, which the PostgreSQL grammar does not have:
//!
//! ```sql
//! CREATE [OR REPLACE] SOURCE [IF NOT EXISTS] name WITH (key = value, …)
//! DROP SOURCE [IF EXISTS] name
//! SHOW SOURCES
//! SHOW CREATE SOURCE name
//! OPTIMIZE [TABLE] name [ZORDER BY (col, …)]
//! VACUUM [TABLE] name [RETAIN n HOURS] [DRY RUN]
//! ```
//!
//! A query string is split into statements with sqlparser's tokenizer; pieces that start
//! with one of these are parsed here, the rest by the PostgreSQL parser as before.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use touchlake_ingest::source::OptionValue;

/// A Touchlake statement.
#[derive(Debug, Clone, PartialEq)]
pub enum LakeCommand {
    /// CREATE SOURCE.
    CreateSource {
        /// Source name.
        name: String,
        /// OR REPLACE.
        or_replace: bool,
        /// IF NOT EXISTS.
        if_not_exists: bool,
        /// The WITH options, dotted keys.
        options: Vec<(String, OptionValue)>,
    },
    /// DROP SOURCE.
    DropSource {
        /// Source name.
        name: String,
        /// IF EXISTS.
        if_exists: bool,
    },
    /// SHOW SOURCES.
    ShowSources,
    /// SHOW CREATE SOURCE.
    ShowCreateSource {
        /// Source name.
        name: String,
    },
    /// OPTIMIZE: compact small files (optionally Z-order).
    Optimize {
        /// `[schema.]table` parts as written (unquoted parts lower-cased).
        table: Vec<String>,
        /// ZORDER BY columns.
        zorder: Vec<String>,
    },
    /// VACUUM: delete files no longer referenced and older than the retention.
    Vacuum {
        /// `[schema.]table` parts.
        table: Vec<String>,
        /// RETAIN n HOURS.
        retain_hours: Option<u64>,
        /// DRY RUN: list, do not delete.
        dry_run: bool,
    },
}

/// One statement of a query string: ours, or SQL text for the PostgreSQL parser.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// A Touchlake statement.
    Lake(LakeCommand),
    /// Anything else, as text.
    Sql(String),
}

/// Split `sql` if it contains a Touchlake statement; None when it has none (the common
/// case, which the PostgreSQL parser handles whole).
pub fn split(sql: &str) -> Result<Option<Vec<Piece>>, String> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Ok(None); // let the real parser report it
    };
    let mut pieces: Vec<Vec<Token>> = vec![vec![]];
    for t in tokens {
        if t == Token::SemiColon {
            pieces.push(vec![]);
        } else if let Some(last) = pieces.last_mut() {
            last.push(t);
        }
    }
    if !pieces.iter().any(|p| is_ours(&significant(p))) {
        return Ok(None);
    }
    let mut out = vec![];
    for p in pieces {
        let sig = significant(&p);
        if sig.is_empty() {
            continue;
        }
        if is_ours(&sig) {
            out.push(Piece::Lake(parse(&sig)?));
        } else {
            out.push(Piece::Sql(p.iter().map(|t| t.to_string()).collect()));
        }
    }
    Ok(Some(out))
}

fn significant(tokens: &[Token]) -> Vec<Token> {
    tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .cloned()
        .collect()
}

fn word(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn is_ours(sig: &[Token]) -> bool {
    let w = |i: usize| word(sig.get(i));
    match w(0).as_deref() {
        Some("CREATE") => {
            w(1).as_deref() == Some("SOURCE")
                || (w(1).as_deref() == Some("OR")
                    && w(2).as_deref() == Some("REPLACE")
                    && w(3).as_deref() == Some("SOURCE"))
        }
        Some("DROP") => w(1).as_deref() == Some("SOURCE"),
        Some("SHOW") => {
            w(1).as_deref() == Some("SOURCES")
                || (w(1).as_deref() == Some("CREATE") && w(2).as_deref() == Some("SOURCE"))
        }
        Some("OPTIMIZE") | Some("VACUUM") => true,
        _ => false,
    }
}

struct Cursor {
    tokens: Vec<Token>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn keyword(&mut self, k: &str) -> bool {
        if word(self.peek()).as_deref() == Some(k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_keyword(&mut self, k: &str) -> Result<(), String> {
        if self.keyword(k) {
            Ok(())
        } else {
            Err(format!("expected {k}, found {}", self.found()))
        }
    }
    fn expect(&mut self, t: Token) -> Result<(), String> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {t}, found {}", self.found()))
        }
    }
    fn found(&self) -> String {
        self.peek()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "end of input".into())
    }
    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) if w.quote_style.is_some() => Ok(w.value),
            Some(Token::Word(w)) if w.keyword == Keyword::NoKeyword || !w.value.is_empty() => {
                Ok(w.value.to_lowercase())
            }
            other => Err(format!(
                "expected a name, found {}",
                other
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "end of input".into())
            )),
        }
    }
    fn qualified(&mut self) -> Result<Vec<String>, String> {
        let mut parts = vec![self.ident()?];
        while self.peek() == Some(&Token::Period) {
            self.pos += 1;
            parts.push(self.ident()?);
        }
        Ok(parts)
    }
    fn end(&self) -> Result<(), String> {
        match self.peek() {
            None | Some(Token::EOF) => Ok(()),
            Some(t) => Err(format!("unexpected {t} at end of statement")),
        }
    }
}

fn parse(sig: &[Token]) -> Result<LakeCommand, String> {
    let mut c = Cursor {
        tokens: sig.iter().filter(|t| **t != Token::EOF).cloned().collect(),
        pos: 0,
    };
    let first = word(c.peek()).unwrap_or_default();
    c.pos += 1;
    let cmd = match first.as_str() {
        "CREATE" => {
            let or_replace = c.keyword("OR");
            if or_replace {
                c.expect_keyword("REPLACE")?;
            }
            c.expect_keyword("SOURCE")?;
            let if_not_exists = c.keyword("IF");
            if if_not_exists {
                c.expect_keyword("NOT")?;
                c.expect_keyword("EXISTS")?;
            }
            let name = c.ident()?;
            c.expect_keyword("WITH")?;
            c.expect(Token::LParen)?;
            let mut options = vec![];
            loop {
                let key = option_key(&mut c)?;
                c.expect(Token::Eq)?;
                let value = option_value(&mut c)?;
                options.push((key, value));
                if c.peek() == Some(&Token::Comma) {
                    c.pos += 1;
                    continue;
                }
                c.expect(Token::RParen)?;
                break;
            }
            LakeCommand::CreateSource {
                name,
                or_replace,
                if_not_exists,
                options,
            }
        }
        "DROP" => {
            c.expect_keyword("SOURCE")?;
            let if_exists = c.keyword("IF");
            if if_exists {
                c.expect_keyword("EXISTS")?;
            }
            LakeCommand::DropSource {
                name: c.ident()?,
                if_exists,
            }
        }
        "SHOW" => {
            if c.keyword("SOURCES") {
                LakeCommand::ShowSources
            } else {
                c.expect_keyword("CREATE")?;
                c.expect_keyword("SOURCE")?;
                LakeCommand::ShowCreateSource { name: c.ident()? }
            }
        }
        "OPTIMIZE" => {
            c.keyword("TABLE");
            let table = c.qualified()?;
            let mut zorder = vec![];
            if c.keyword("ZORDER") {
                c.expect_keyword("BY")?;
                let paren = c.peek() == Some(&Token::LParen);
                if paren {
                    c.pos += 1;
                }
                loop {
                    zorder.push(c.ident()?);
                    if c.peek() == Some(&Token::Comma) {
                        c.pos += 1;
                        continue;
                    }
                    break;
                }
                if paren {
                    c.expect(Token::RParen)?;
                }
            }
            LakeCommand::Optimize { table, zorder }
        }
        "VACUUM" => {
            c.keyword("TABLE");
            let table = c.qualified()?;
            let mut retain_hours = None;
            let mut dry_run = false;
            loop {
                if c.keyword("RETAIN") {
                    match c.next() {
                        Some(Token::Number(n, _)) => {
                            retain_hours = Some(
                                n.parse::<u64>()
                                    .map_err(|_| format!("RETAIN needs whole hours, got {n}"))?,
                            )
                        }
                        other => {
                            return Err(format!(
                                "expected a number of hours after RETAIN, found {}",
                                other.map(|t| t.to_string()).unwrap_or_default()
                            ));
                        }
                    }
                    c.expect_keyword("HOURS")?;
                } else if c.keyword("DRY") {
                    c.expect_keyword("RUN")?;
                    dry_run = true;
                } else {
                    break;
                }
            }
            LakeCommand::Vacuum {
                table,
                retain_hours,
                dry_run,
            }
        }
        other => return Err(format!("unexpected {other}")),
    };
    c.end()?;
    Ok(cmd)
}

/// `format.delimiter`, `rules.1.column`, `'mapping.phone'`, `"x"`.
fn option_key(c: &mut Cursor) -> Result<String, String> {
    if let Some(Token::SingleQuotedString(s)) = c.peek() {
        let s = s.clone();
        c.pos += 1;
        return Ok(s);
    }
    let mut key = String::new();
    loop {
        match c.peek() {
            Some(Token::Eq) | None => break,
            Some(Token::Word(w)) => {
                key.push_str(&if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_lowercase()
                });
            }
            Some(Token::Period) => key.push('.'),
            Some(Token::Number(n, _)) => key.push_str(n),
            Some(t) => return Err(format!("unexpected {t} in option name")),
        }
        c.pos += 1;
    }
    if key.is_empty() {
        return Err(format!("expected an option name, found {}", c.found()));
    }
    Ok(key)
}

fn option_value(c: &mut Cursor) -> Result<OptionValue, String> {
    match c.next() {
        Some(Token::SingleQuotedString(s))
        | Some(Token::EscapedStringLiteral(s))
        | Some(Token::DollarQuotedString(datafusion::sql::sqlparser::ast::DollarQuotedString {
            value: s,
            ..
        })) => Ok(OptionValue::Text(s)),
        Some(Token::Number(n, _)) => Ok(OptionValue::Number(n)),
        Some(Token::Minus) => match c.next() {
            Some(Token::Number(n, _)) => Ok(OptionValue::Number(format!("-{n}"))),
            other => Err(format!(
                "expected a number after -, found {}",
                other.map(|t| t.to_string()).unwrap_or_default()
            )),
        },
        Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("true") => {
            Ok(OptionValue::Bool(true))
        }
        Some(Token::Word(w))
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("false") =>
        {
            Ok(OptionValue::Bool(false))
        }
        Some(Token::Word(w))
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("array") =>
        {
            c.expect(Token::LBracket)?;
            list(c, Token::RBracket)
        }
        Some(Token::LParen) => list(c, Token::RParen),
        other => Err(format!(
            "expected a string, number, boolean or ARRAY[…], found {}",
            other
                .map(|t| t.to_string())
                .unwrap_or_else(|| "end of input".into())
        )),
    }
}

fn list(c: &mut Cursor, close: Token) -> Result<OptionValue, String> {
    let mut items = vec![];
    if c.peek() == Some(&close) {
        c.pos += 1;
        return Ok(OptionValue::List(items));
    }
    loop {
        items.push(option_value(c)?);
        if c.peek() == Some(&Token::Comma) {
            c.pos += 1;
            continue;
        }
        c.expect(close.clone())?;
        return Ok(OptionValue::List(items));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_parses() {
        let p = split("SELECT 1; CREATE SOURCE pos WITH (kind = 'files', natural_key = ARRAY['a', 'b'], rules.1.min = -5, format.header = false, 'mapping.phone' = 'phone_e164(m, ''CN'')'); show sources").unwrap().unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], Piece::Sql("SELECT 1".into()));
        let Piece::Lake(LakeCommand::CreateSource { name, options, .. }) = &p[1] else {
            panic!("{p:?}")
        };
        assert_eq!(name, "pos");
        assert_eq!(
            options[1].1,
            OptionValue::List(vec![
                OptionValue::Text("a".into()),
                OptionValue::Text("b".into())
            ])
        );
        assert_eq!(
            options[2],
            ("rules.1.min".into(), OptionValue::Number("-5".into()))
        );
        assert_eq!(options[3].1, OptionValue::Bool(false));
        assert_eq!(
            options[4],
            (
                "mapping.phone".into(),
                OptionValue::Text("phone_e164(m, 'CN')".into())
            )
        );
        assert_eq!(p[2], Piece::Lake(LakeCommand::ShowSources));
        assert_eq!(split("select 'create source'").unwrap(), None);
        assert_eq!(
            split("VACUUM unified.touchpoints RETAIN 168 HOURS DRY RUN")
                .unwrap()
                .unwrap()[0],
            Piece::Lake(LakeCommand::Vacuum {
                table: vec!["unified".into(), "touchpoints".into()],
                retain_hours: Some(168),
                dry_run: true
            })
        );
        assert!(split("CREATE SOURCE x WITH (a = )").is_err());
    }
}
