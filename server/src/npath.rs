//! Aster/Teradata `NPATH` (functions.md §E), desugared to `MATCH_RECOGNIZE` before parsing:
//!
//! ```text
//! NPATH(ON rel PARTITION BY … ORDER BY … MODE(OVERLAPPING | NONOVERLAPPING)
//!       PATTERN('A.B*') SYMBOLS(cond AS A, …)
//!       RESULT(FIRST(c OF A) AS x, LAST(c OF B) AS y, COUNT(* OF ANY(A, B)) AS n,
//!              ACCUMULATE(c OF B) AS path, …))
//! ```
//!
//! becomes `rel MATCH_RECOGNIZE (PARTITION BY … ORDER BY … MEASURES FIRST(A.c) AS x, …
//! AFTER MATCH SKIP PAST LAST ROW | TO NEXT ROW PATTERN (A B*) DEFINE A AS cond, …)`. In
//! the pattern `.` joins symbols (nPath's concatenation); `OF ANY(…)` naming every symbol
//! means all of the match's rows; `ACCUMULATE` is `ARRAY_AGG`.

/// Why an NPATH call cannot be rewritten (a syntax error, SQLSTATE 42601).
#[derive(Debug, thiserror::Error)]
#[error("NPATH: {0}")]
pub struct NpathError(String);

fn err(m: impl Into<String>) -> NpathError {
    NpathError(m.into())
}

/// Does the SQL text call NPATH?
pub fn mentions(sql: &str) -> bool {
    find_call(sql, 0).is_some()
}

/// The byte offset of the next `NPATH(` (case-insensitive, outside quotes) from `from`.
fn find_call(sql: &str, from: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None => {
                let before_ok =
                    i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                // Bytes only: `i` need not be on a character boundary.
                if before_ok
                    && bytes.len() >= i + 5
                    && bytes[i..i + 5].eq_ignore_ascii_case(b"npath")
                {
                    let rest = bytes[i + 5..].iter().find(|b| !b.is_ascii_whitespace());
                    if rest == Some(&b'(') {
                        return Some(i);
                    }
                }
            }
        }
        i += 1;
    }
    None
}

/// The index just past the parenthesis closing the one at `open`.
fn closing(sql: &str, open: usize) -> Result<usize, NpathError> {
    let bytes = sql.as_bytes();
    let (mut depth, mut quote) = (0usize, None::<u8>);
    for (i, &c) in bytes.iter().enumerate().skip(open) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
                _ => {}
            },
        }
    }
    Err(err("unbalanced parentheses"))
}

/// Split `s` at top-level commas.
fn split_commas(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (vec![], String::new(), 0i32, None::<char>);
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(cur.trim().to_string());
                    cur.clear();
                    continue;
                }
                _ => {}
            },
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The top-level clauses of an NPATH body, keyed by their upper-case keyword.
fn clauses(body: &str) -> Result<Vec<(String, String)>, NpathError> {
    const KEYWORDS: [&str; 7] = [
        "ON",
        "PARTITION BY",
        "ORDER BY",
        "MODE",
        "PATTERN",
        "SYMBOLS",
        "RESULT",
    ];
    let bytes = body.as_bytes();
    let (mut depth, mut quote) = (0i32, None::<u8>);
    let mut starts: Vec<(usize, &str)> = vec![];
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ if depth == 0 => {
                    let boundary =
                        i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                    if boundary {
                        for k in KEYWORDS {
                            let words: Vec<&str> = k.split(' ').collect();
                            if let Some(len) = keyword_at(body, i, &words) {
                                starts.push((i, k));
                                i += len - 1;
                                break;
                            }
                        }
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    let mut out = vec![];
    for (n, (at, k)) in starts.iter().enumerate() {
        let len = keyword_at(body, *at, &k.split(' ').collect::<Vec<_>>()).unwrap_or(k.len());
        let end = starts.get(n + 1).map_or(body.len(), |s| s.0);
        out.push((k.to_string(), body[at + len..end].trim().to_string()));
    }
    Ok(out)
}

/// The length of `words` (separated by any whitespace, case-insensitive) at `at`, if there
/// and followed by a word boundary.
fn keyword_at(s: &str, at: usize, words: &[&str]) -> Option<usize> {
    // Bytes only: `at` need not be on a character boundary.
    let b = s.as_bytes();
    let mut i = at;
    for (n, w) in words.iter().enumerate() {
        if n > 0 {
            let ws = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_whitespace())
                .count();
            if ws == 0 {
                return None;
            }
            i += ws;
        }
        if b.len() < i + w.len() || !b[i..i + w.len()].eq_ignore_ascii_case(w.as_bytes()) {
            return None;
        }
        i += w.len();
    }
    match b.get(i) {
        Some(c) if c.is_ascii_alphanumeric() || *c == b'_' => None,
        _ => Some(i - at),
    }
}

/// `( … )` → the inside.
fn parenthesized(s: &str, what: &str) -> Result<String, NpathError> {
    let s = s.trim();
    if s.starts_with('(') && s.ends_with(')') {
        Ok(s[1..s.len() - 1].trim().to_string())
    } else {
        Err(err(format!("{what} needs parentheses")))
    }
}

/// nPath's pattern text (`'A.B*.(C|D)'`) as a MATCH_RECOGNIZE pattern.
fn pattern(p: &str) -> Result<String, NpathError> {
    let p = p.trim();
    let inner = p
        .strip_prefix('\'')
        .and_then(|p| p.strip_suffix('\''))
        .ok_or_else(|| err("PATTERN takes a quoted pattern like 'A.B*'"))?;
    Ok(inner.replace('.', " "))
}

/// One RESULT item as a MEASURES item.
fn measure(item: &str, symbols: &[String]) -> Result<String, NpathError> {
    let upper = item.to_ascii_uppercase();
    let as_at = upper
        .rfind(" AS ")
        .ok_or_else(|| err(format!("RESULT item '{item}' needs AS name")))?;
    let (call, name) = (item[..as_at].trim(), item[as_at + 4..].trim());
    let open = call
        .find('(')
        .ok_or_else(|| err(format!("RESULT item '{call}' is not like FIRST(col OF A)")))?;
    let func = call[..open].trim().to_ascii_uppercase();
    let args = parenthesized(&call[open..], "a RESULT function")?;
    let upper_args = args.to_ascii_uppercase();
    let of = upper_args
        .rfind(" OF ")
        .ok_or_else(|| err(format!("RESULT item '{call}' needs OF symbol")))?;
    let (col, target) = (args[..of].trim(), args[of + 4..].trim());
    let all = |list: &str| -> Result<bool, NpathError> {
        let named: Vec<String> = split_commas(list)
            .into_iter()
            .map(|s| s.to_ascii_uppercase())
            .collect();
        let every = symbols
            .iter()
            .all(|s| named.contains(&s.to_ascii_uppercase()));
        if every {
            Ok(true)
        } else {
            Err(err(format!(
                "OF ANY({list}) must name every symbol (a subset is not supported)"
            )))
        }
    };
    let qualified = if target.to_ascii_uppercase().starts_with("ANY") {
        let list = parenthesized(&target[3..], "ANY")?;
        all(&list)?;
        None
    } else {
        Some(target.to_string())
    };
    let arg = match (&qualified, col) {
        (None, c) => c.to_string(),
        (Some(s), "*") => format!("{s}.*"),
        (Some(s), c) => format!("{s}.{c}"),
    };
    let f = match func.as_str() {
        "FIRST" | "LAST" | "COUNT" | "SUM" | "AVG" | "MIN" | "MAX" => func,
        "ACCUMULATE" => {
            if col.to_ascii_uppercase().starts_with("DISTINCT ") {
                return Err(err("ACCUMULATE(DISTINCT …) is not supported"));
            }
            "ARRAY_AGG".to_string()
        }
        other => {
            return Err(err(format!(
                "RESULT function {other} is not supported (FIRST, LAST, COUNT, SUM, AVG, MIN, \
                 MAX, ACCUMULATE)"
            )));
        }
    };
    Ok(format!("{f}({arg}) AS {name}"))
}

/// One NPATH body (the text inside `NPATH( … )`) as `rel MATCH_RECOGNIZE ( … )`.
fn desugar(body: &str) -> Result<String, NpathError> {
    let parts = clauses(body)?;
    let get = |k: &str| parts.iter().find(|p| p.0 == k).map(|p| p.1.clone());
    let on = get("ON").ok_or_else(|| err("ON rel is required"))?;
    let pattern_text = pattern(&parenthesized(
        &get("PATTERN").ok_or_else(|| err("PATTERN is required"))?,
        "PATTERN",
    )?)?;
    let symbols_text = parenthesized(
        &get("SYMBOLS").ok_or_else(|| err("SYMBOLS is required"))?,
        "SYMBOLS",
    )?;
    let mut defines = vec![];
    let mut names = vec![];
    for s in split_commas(&symbols_text) {
        let upper = s.to_ascii_uppercase();
        let at = upper
            .rfind(" AS ")
            .ok_or_else(|| err(format!("symbol '{s}' is not like cond AS A")))?;
        let (cond, name) = (s[..at].trim(), s[at + 4..].trim());
        names.push(name.to_string());
        defines.push(format!("{name} AS {cond}"));
    }
    let result = parenthesized(
        &get("RESULT").ok_or_else(|| err("RESULT is required"))?,
        "RESULT",
    )?;
    let measures: Vec<String> = split_commas(&result)
        .iter()
        .map(|m| measure(m, &names))
        .collect::<Result<_, _>>()?;
    let skip = match get("MODE")
        .map(|m| parenthesized(&m, "MODE"))
        .transpose()?
        .map(|m| m.to_ascii_uppercase())
        .as_deref()
    {
        None | Some("NONOVERLAPPING") => "PAST LAST ROW",
        Some("OVERLAPPING") => "TO NEXT ROW",
        Some(other) => {
            return Err(err(format!(
                "MODE({other}) is not OVERLAPPING or NONOVERLAPPING"
            )));
        }
    };
    let mut clause = String::new();
    if let Some(p) = get("PARTITION BY") {
        clause.push_str(&format!("PARTITION BY {p} "));
    }
    let order = get("ORDER BY").ok_or_else(|| err("ORDER BY is required"))?;
    clause.push_str(&format!(
        "ORDER BY {order} MEASURES {} ONE ROW PER MATCH AFTER MATCH SKIP {skip} \
         PATTERN ({pattern_text}) DEFINE {}",
        measures.join(", "),
        defines.join(", ")
    ));
    Ok(format!("{on} MATCH_RECOGNIZE ({clause}) AS npath"))
}

/// Rewrite every NPATH call of the SQL text into MATCH_RECOGNIZE.
pub fn rewrite(sql: &str) -> Result<String, NpathError> {
    let mut out = String::new();
    let mut at = 0;
    while let Some(start) = find_call(sql, at) {
        let open = start + sql[start..].find('(').unwrap_or(5);
        let end = closing(sql, open)?;
        out.push_str(&sql[at..start]);
        out.push_str(&desugar(&sql[open + 1..end - 1])?);
        // An alias after NPATH(…) would repeat ours: drop `AS npath` when one follows.
        at = end;
        let rest = sql[at..].trim_start();
        let upper = rest.to_ascii_uppercase();
        if upper.starts_with("AS ") || (!rest.is_empty() && starts_alias(&upper)) {
            out.truncate(out.len() - " AS npath".len());
        }
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// Does the text after the call start a table alias (an identifier that is not a keyword)?
fn starts_alias(upper: &str) -> bool {
    let word: String = upper
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    !word.is_empty()
        && ![
            "WHERE",
            "GROUP",
            "ORDER",
            "LIMIT",
            "JOIN",
            "LEFT",
            "RIGHT",
            "INNER",
            "FULL",
            "CROSS",
            "ON",
            "UNION",
            "EXCEPT",
            "INTERSECT",
            "HAVING",
            "OFFSET",
            "FETCH",
            "WINDOW",
        ]
        .contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desugars_to_match_recognize() {
        let sql = "SELECT * FROM NPATH(ON clicks PARTITION BY uid ORDER BY ts MODE(OVERLAPPING) \
                   PATTERN('A.B*.C') SYMBOLS(page = 'home' AS A, TRUE AS B, page = 'buy' AS C) \
                   RESULT(FIRST(ts OF A) AS t0, COUNT(* OF B) AS n, ACCUMULATE(page OF ANY(A, B, C)) AS path)) p \
                   WHERE n > 1";
        let out = rewrite(sql).expect("rewrite");
        assert_eq!(
            out,
            "SELECT * FROM clicks MATCH_RECOGNIZE (PARTITION BY uid ORDER BY ts MEASURES \
             FIRST(A.ts) AS t0, COUNT(B.*) AS n, ARRAY_AGG(page) AS path ONE ROW PER MATCH \
             AFTER MATCH SKIP TO NEXT ROW PATTERN (A B* C) DEFINE A AS page = 'home', B AS TRUE, \
             C AS page = 'buy') p WHERE n > 1"
        );
        assert!(rewrite("SELECT * FROM NPATH(ON t ORDER BY x PATTERN('A') SYMBOLS(TRUE AS A) RESULT(FIRST(x OF ANY(A, B)) AS y))").is_ok());
        assert!(rewrite("SELECT * FROM NPATH(ON t ORDER BY x PATTERN(A) SYMBOLS(TRUE AS A) RESULT(FIRST(x OF A) AS y))").is_err());
        assert!(!mentions("SELECT 'npath(' FROM t"));
        // Multi-byte text before and inside the call.
        let out = rewrite("SELECT '→' AS a, * FROM NPATH(ON t ORDER BY x PATTERN('A') SYMBOLS(y = 'é→' AS A) RESULT(FIRST(x OF A) AS z))").expect("utf-8");
        assert!(out.contains("DEFINE A AS y = 'é→'"));
    }
}
