//! Source file readers: bytes of one file → chunks of records as text columns, plus the
//! records that could not be parsed at all (wrong field count, broken JSON, bad encoding).
//!
//! Every record read ends up in exactly one place: a row of the chunk's batch (which is
//! then mapped and validated) or a [`ParseReject`]. Column names are normalised so that
//! mappings can use them unquoted: trimmed, lower-cased, and characters Delta does not allow
//! in column names (` ,;{}()\n\t=`) replaced by `_`.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::error::{IngestError, Result};
use crate::source::Format;

/// Columns every landed batch carries after the source's own.
pub const LOCATION: &str = "_location";
/// The record as text (CSV line, JSON line).
pub const RAW: &str = "_raw";
/// The record's position in its file (0-based), for deterministic ordering.
pub const ROW: &str = "_row";

/// A record that could not be parsed into columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseReject {
    /// `file:line`.
    pub location: String,
    /// The record as text.
    pub raw: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Up to `batch_rows` records of one file.
#[derive(Debug)]
pub struct Chunk {
    /// 0-based chunk number within the file.
    pub index: usize,
    /// Parsed records: the source's columns (text) + `_location`, `_raw`, `_row`.
    pub batch: RecordBatch,
    /// Records that could not be parsed.
    pub rejects: Vec<ParseReject>,
}

impl Chunk {
    /// Records read in this chunk (parsed + rejected).
    pub fn records(&self) -> usize {
        self.batch.num_rows() + self.rejects.len()
    }
}

/// Normalise a column name (see the module docs).
pub fn column_name(raw: &str, index: usize) -> String {
    let s: String = raw
        .trim()
        .trim_start_matches('\u{feff}')
        .to_lowercase()
        .chars()
        .map(|c| if " ,;{}()\n\t=".contains(c) { '_' } else { c })
        .collect();
    if s.is_empty() || s.starts_with('_') && s.chars().all(|c| c == '_') {
        format!("column_{}", index + 1)
    } else if s.starts_with('_') {
        // Leading underscores are reserved for lineage columns.
        format!("c{s}")
    } else {
        s
    }
}

/// Decode file bytes to UTF-8 (a BOM wins over the configured encoding). Malformed
/// sequences become U+FFFD, and the record holding one is rejected by the parser.
pub fn decode(bytes: &[u8], encoding: &str) -> Result<String> {
    let enc = encoding_rs::Encoding::for_label(encoding.as_bytes())
        .ok_or_else(|| IngestError::Definition(format!("unknown encoding '{encoding}'")))?;
    let (text, _, _) = enc.decode(bytes);
    Ok(text.into_owned())
}

/// Split `text` (one decoded file) into chunks.
pub fn parse(text: &str, file: &str, format: &Format, batch_rows: usize) -> Result<Vec<Chunk>> {
    match format.kind.as_str() {
        "csv" => parse_csv(text, file, format, batch_rows),
        "ndjson" => Ok(parse_ndjson(text, file, batch_rows)),
        other => Err(IngestError::Definition(format!(
            "format '{other}' is not a text format"
        ))),
    }
}

/// Builds one chunk's batch from records of text values.
struct ChunkBuilder {
    columns: Vec<String>,
    values: Vec<StringBuilder>,
    location: StringBuilder,
    raw: StringBuilder,
    row: Int64Builder,
    rejects: Vec<ParseReject>,
}

impl ChunkBuilder {
    fn new(columns: Vec<String>) -> Self {
        let values = columns.iter().map(|_| StringBuilder::new()).collect();
        Self {
            columns,
            values,
            location: StringBuilder::new(),
            raw: StringBuilder::new(),
            row: Int64Builder::new(),
            rejects: vec![],
        }
    }

    fn len(&self) -> usize {
        datafusion::arrow::array::ArrayBuilder::len(&self.row) + self.rejects.len()
    }

    fn push(&mut self, fields: &[Option<&str>], location: String, raw: &str, row: i64) {
        for (b, v) in self.values.iter_mut().zip(fields) {
            b.append_option(*v);
        }
        self.location.append_value(location);
        self.raw.append_value(raw);
        self.row.append_value(row);
    }

    fn finish(mut self, index: usize) -> Result<Chunk> {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(c, DataType::Utf8, true))
            .collect();
        fields.push(Field::new(LOCATION, DataType::Utf8, false));
        fields.push(Field::new(RAW, DataType::Utf8, false));
        fields.push(Field::new(ROW, DataType::Int64, false));
        let mut arrays: Vec<ArrayRef> = self
            .values
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        arrays.push(Arc::new(self.location.finish()));
        arrays.push(Arc::new(self.raw.finish()));
        arrays.push(Arc::new(self.row.finish()));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        Ok(Chunk {
            index,
            batch,
            rejects: self.rejects,
        })
    }
}

fn unique_names(raw: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, n)| {
            let mut name = column_name(&n, i);
            while !seen.insert(name.clone()) {
                name = format!("{name}_{}", i + 1);
            }
            name
        })
        .collect()
}

fn parse_csv(text: &str, file: &str, format: &Format, batch_rows: usize) -> Result<Vec<Chunk>> {
    let delimiter = format.delimiter.as_bytes().first().copied().unwrap_or(b',');
    let quote = format.quote.as_bytes().first().copied().unwrap_or(b'"');
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quote(quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    let mut columns: Option<Vec<String>> = None;
    let mut chunks = vec![];
    let mut builder: Option<ChunkBuilder> = None;
    let mut row: i64 = 0;
    loop {
        let start = reader.position().clone();
        let more = match reader.read_record(&mut record) {
            Ok(m) => m,
            Err(e) => {
                // Broken quoting or invalid UTF-8: the rest of the line is the record.
                let end = reader.position().byte() as usize;
                let raw = text
                    .get(start.byte() as usize..end)
                    .unwrap_or("")
                    .trim_end_matches(['\r', '\n']);
                if let Some(b) = builder.as_mut() {
                    b.rejects.push(ParseReject {
                        location: format!("{file}:{}", start.line()),
                        raw: raw.to_string(),
                        reason: format!("malformed CSV: {e}"),
                    });
                    row += 1;
                    continue;
                }
                return Err(IngestError::Read(format!(
                    "{file}: malformed CSV header: {e}"
                )));
            }
        };
        if !more {
            break;
        }
        let end = reader.position().byte() as usize;
        let raw = text
            .get(start.byte() as usize..end)
            .unwrap_or("")
            .trim_end_matches(['\r', '\n']);
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue; // a blank line is not a record
        }
        let cols = match &columns {
            Some(c) => c,
            None => {
                let names: Vec<String> = if format.header {
                    record.iter().map(str::to_string).collect()
                } else {
                    (1..=record.len()).map(|i| format!("column_{i}")).collect()
                };
                columns = Some(unique_names(names));
                builder = Some(ChunkBuilder::new(columns.clone().unwrap_or_default()));
                if format.header {
                    continue;
                }
                columns.as_ref().expect("set above")
            }
        };
        let b = builder.get_or_insert_with(|| ChunkBuilder::new(cols.clone()));
        let location = format!("{file}:{}", start.line());
        if record.len() != cols.len() {
            b.rejects.push(ParseReject {
                location,
                raw: raw.to_string(),
                reason: format!("expected {} fields, found {}", cols.len(), record.len()),
            });
        } else if raw.contains('\u{fffd}') {
            b.rejects.push(ParseReject {
                location,
                raw: raw.to_string(),
                reason: format!("invalid {} byte sequence", format.encoding),
            });
        } else {
            let fields: Vec<Option<&str>> = record
                .iter()
                .map(|f| if f.is_empty() { None } else { Some(f) })
                .collect();
            b.push(&fields, location, raw, row);
        }
        row += 1;
        if b.len() >= batch_rows {
            let full = builder.take().expect("present");
            chunks.push(full.finish(chunks.len())?);
            builder = Some(ChunkBuilder::new(cols.clone()));
        }
    }
    if let Some(b) = builder
        && (b.len() > 0 || chunks.is_empty())
    {
        chunks.push(b.finish(chunks.len())?);
    }
    Ok(chunks)
}

/// Split a Parquet file into chunks; every column is read as text (the raw landing keeps
/// values as the source has them, rendered by Arrow's casts).
pub fn parquet(bytes: &[u8], file: &str, batch_rows: usize) -> Result<Vec<Chunk>> {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let data = bytes::Bytes::copy_from_slice(bytes);
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .and_then(|b| b.with_batch_size(batch_rows.min(65_536)).build())
        .map_err(|e| IngestError::Read(format!("{file}: not a readable Parquet file: {e}")))?;
    let mut chunks: Vec<Chunk> = vec![];
    let mut builder: Option<ChunkBuilder> = None;
    let mut row: i64 = 0;
    for batch in reader {
        let batch = batch.map_err(|e| IngestError::Read(format!("{file}: {e}")))?;
        let schema = batch.schema();
        let names = unique_names(schema.fields().iter().map(|f| f.name().clone()).collect());
        let texts: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(a, f)| {
                datafusion::arrow::compute::cast(a, &DataType::Utf8).map_err(|e| {
                    IngestError::Read(format!(
                        "{file}: column {} of type {} cannot be read as text: {e}",
                        f.name(),
                        f.data_type()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let texts: Vec<&datafusion::arrow::array::StringArray> = texts
            .iter()
            .map(|a| a.as_any().downcast_ref().expect("cast to Utf8"))
            .collect();
        for i in 0..batch.num_rows() {
            let b = builder.get_or_insert_with(|| ChunkBuilder::new(names.clone()));
            let fields: Vec<Option<&str>> = texts
                .iter()
                .map(|a| (!datafusion::arrow::array::Array::is_null(*a, i)).then(|| a.value(i)))
                .collect();
            let obj: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(&fields)
                .map(|(n, v)| {
                    (
                        n.clone(),
                        v.map_or(serde_json::Value::Null, |s| {
                            serde_json::Value::String(s.into())
                        }),
                    )
                })
                .collect();
            let raw = serde_json::Value::Object(obj).to_string();
            b.push(&fields, format!("{file}:{}", row + 1), &raw, row);
            row += 1;
            if b.len() >= batch_rows {
                let full = builder.take().expect("present");
                chunks.push(full.finish(chunks.len())?);
            }
        }
    }
    if let Some(b) = builder {
        chunks.push(b.finish(chunks.len())?);
    }
    if chunks.is_empty() {
        chunks.push(ChunkBuilder::new(vec![]).finish(0)?);
    }
    Ok(chunks)
}

/// One NDJSON record: its keys in order, each with its value as text (NULL for JSON null),
/// borrowed from the line where it has no escapes. A key given twice keeps its last value.
type Record<'a> = Vec<(Cow<'a, str>, Option<Cow<'a, str>>)>;

/// A JSON value as a record field's text: strings as they are, numbers and booleans as
/// `serde_json` writes them, nested objects and arrays as JSON, null as None.
struct FieldText<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for FieldText<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FieldText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(Some(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                }))))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
                // Exactly as serde_json writes the number.
                Ok(FieldText(Some(Cow::Owned(
                    serde_json::Number::from_f64(v)
                        .map_or_else(|| "null".into(), |n| n.to_string()),
                ))))
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(None))
            }
            fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(FieldText(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let v: serde_json::Value = serde::Deserialize::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(FieldText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let v: serde_json::Value = serde::Deserialize::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(FieldText(Some(Cow::Owned(v.to_string()))))
            }
        }
        d.deserialize_any(V)
    }
}

/// A line's JSON object, or why it is not one.
fn parse_record(line: &str) -> std::result::Result<Record<'_>, String> {
    struct Obj<'a>(Record<'a>);
    impl<'de> serde::Deserialize<'de> for Obj<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Obj<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Self::Value, A::Error> {
                    let mut out: Record<'de> = Vec::with_capacity(map.size_hint().unwrap_or(8));
                    while let Some((k, v)) = map.next_entry::<Cow<'de, str>, FieldText<'de>>()? {
                        out.push((k, v.0));
                    }
                    Ok(Obj(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    // Not an object at all (a number, a list): say so, as before.
    let first = line.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return match serde_json::from_str::<serde_json::Value>(line) {
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        };
    }
    let mut rec = serde_json::from_str::<Obj>(line)
        .map_err(|e| format!("invalid JSON: {e}"))?
        .0;
    // Keys in order, the last value of a repeated key (as a JSON map reads them).
    rec.reverse();
    rec.sort_by(|a, b| a.0.cmp(&b.0));
    rec.dedup_by(|a, b| a.0 == b.0);
    Ok(rec)
}

fn parse_ndjson(text: &str, file: &str, batch_rows: usize) -> Vec<Chunk> {
    let mut chunks = vec![];
    let mut pending: Vec<(usize, &str, Record<'_>)> = vec![];
    let mut rejects = vec![];
    let flush = |pending: &mut Vec<(usize, &str, Record<'_>)>,
                 rejects: &mut Vec<ParseReject>,
                 chunks: &mut Vec<Chunk>|
     -> Result<()> {
        let mut names: Vec<String> = vec![];
        let mut index: std::collections::HashMap<&str, Option<usize>> =
            std::collections::HashMap::new();
        for (_, _, rec) in pending.iter() {
            for (k, _) in rec {
                if !index.contains_key(k.as_ref()) {
                    let name = column_name(k, names.len());
                    if names.contains(&name) {
                        index.insert(k.as_ref(), names.iter().position(|n| *n == name));
                    } else {
                        index.insert(k.as_ref(), Some(names.len()));
                        names.push(name);
                    }
                }
            }
        }
        let mut b = ChunkBuilder::new(names.clone());
        let mut fields: Vec<Option<&str>> = vec![None; names.len()];
        for (line, raw, rec) in pending.iter() {
            fields.iter_mut().for_each(|f| *f = None);
            for (k, v) in rec {
                if let Some(Some(i)) = index.get(k.as_ref()) {
                    fields[*i] = v.as_deref();
                }
            }
            b.push(&fields, format!("{file}:{line}"), raw, *line as i64 - 1);
        }
        b.rejects = std::mem::take(rejects);
        chunks.push(b.finish(chunks.len())?);
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        let raw = line.trim_end_matches('\r');
        if raw.trim().is_empty() {
            continue;
        }
        match parse_record(raw) {
            Ok(rec) => pending.push((i + 1, raw, rec)),
            Err(reason) => rejects.push(ParseReject {
                location: format!("{file}:{}", i + 1),
                raw: raw.to_string(),
                reason,
            }),
        }
        if pending.len() + rejects.len() >= batch_rows {
            // Errors here are Arrow schema errors on text columns, which cannot happen.
            let _ = flush(&mut pending, &mut rejects, &mut chunks);
            pending.clear();
        }
    }
    if !pending.is_empty() || !rejects.is_empty() || chunks.is_empty() {
        let _ = flush(&mut pending, &mut rejects, &mut chunks);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record as `serde_json::Value` reads it (the way records were read before).
    fn by_value(line: &str) -> std::result::Result<Vec<(String, Option<String>)>, String> {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(obj)) => Ok(obj
                .into_iter()
                .map(|(k, v)| {
                    let t = match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s),
                        other => Some(other.to_string()),
                    };
                    (k, t)
                })
                .collect()),
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        }
    }

    #[test]
    fn records_read_as_serde_json_values_read_them() {
        let lines = [
            r#"{"b":"x","a":1,"c":-2.50,"d":1e3,"e":true,"f":null,"g":[1,"two",{"h":3}],"i":{"j":[]}}"#,
            r#"{"s":"tab\tquote\"uni\u00e9\ud83d\ude00","t":"plain","k":"dup1","k":"dup2"}"#,
            r#"{"n":18446744073709551615,"m":-9223372036854775808,"f":0.1,"z":-0.0,"big":1.7976931348623157e308}"#,
            r#"  {"spaced" : "yes" }  "#,
            r#"{}"#,
            r#"[1,2]"#,
            r#"42"#,
            r#"{"truncated": "ab"#,
            r#"{"a":1,}"#,
            r#"not json"#,
        ];
        for line in lines {
            let ours = parse_record(line).map(|r| {
                r.into_iter()
                    .map(|(k, v)| (k.into_owned(), v.map(Cow::into_owned)))
                    .collect::<Vec<_>>()
            });
            assert_eq!(ours, by_value(line), "{line}");
        }
    }
    use datafusion::arrow::array::{Array, AsArray};

    fn csv_format() -> Format {
        Format::default()
    }

    #[test]
    fn csv_counts_every_record_once() {
        let text = "Order ID,Mobile,Amount\n1,138 0013 8000,\"1,234.50\"\n2,x\n\n3,,7\n";
        let chunks = parse(text, "a.csv", &csv_format(), 2).unwrap();
        let parsed: usize = chunks.iter().map(|c| c.batch.num_rows()).sum();
        let rejected: Vec<&ParseReject> = chunks.iter().flat_map(|c| &c.rejects).collect();
        assert_eq!(parsed, 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].location, "a.csv:3");
        assert_eq!(rejected[0].raw, "2,x");
        assert_eq!(rejected[0].reason, "expected 3 fields, found 2");
        let b = &chunks[0].batch;
        assert_eq!(b.schema().field(0).name(), "order_id");
        assert_eq!(b.column(2).as_string::<i32>().value(0), "1,234.50");
        let last = &chunks.last().unwrap().batch;
        assert!(
            last.column(1).is_null(last.num_rows() - 1),
            "empty field is NULL"
        );
    }

    #[test]
    fn gbk_and_bom() {
        let (gbk, _, _) = encoding_rs::GBK.encode("姓名,城市\n张三,上海\n");
        let text = decode(&gbk, "gbk").unwrap();
        let chunks = parse(&text, "g.csv", &csv_format(), 100).unwrap();
        assert_eq!(chunks[0].batch.schema().field(0).name(), "姓名");
        assert_eq!(
            chunks[0].batch.column(1).as_string::<i32>().value(0),
            "上海"
        );
        let bom = decode("\u{feff}a,b\n1,2\n".as_bytes(), "utf-8").unwrap();
        let chunks = parse(&bom, "b.csv", &csv_format(), 100).unwrap();
        assert_eq!(chunks[0].batch.schema().field(0).name(), "a");
    }

    #[test]
    fn ndjson_truncated_lines_are_rejected() {
        let text = "{\"a\":1,\"b\":\"x\"}\n{\"a\":2,\"b\n[1]\n{\"c\":{\"d\":true}}\n";
        let chunks = parse(
            text,
            "e.ndjson",
            &Format {
                kind: "ndjson".into(),
                ..Format::default()
            },
            100,
        )
        .unwrap();
        let c = &chunks[0];
        assert_eq!(c.batch.num_rows(), 2);
        assert_eq!(c.rejects.len(), 2);
        assert!(c.rejects[0].reason.starts_with("invalid JSON"));
        assert_eq!(c.rejects[1].reason, "not a JSON object");
        assert_eq!(
            c.batch.column(2).as_string::<i32>().value(1),
            "{\"d\":true}"
        );
    }
}

/// Options of `COPY … FROM STDIN`, as PostgreSQL reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyOptions {
    /// `text` (tab-separated, backslash escapes) or `csv`.
    pub csv: bool,
    /// Field delimiter (tab for text, comma for CSV unless given).
    pub delimiter: char,
    /// The string that means NULL (`\N` for text, empty for CSV).
    pub null: String,
    /// Whether the first line is a header to skip.
    pub header: bool,
    /// CSV quote character.
    pub quote: char,
}

impl CopyOptions {
    /// PostgreSQL's defaults for the format.
    pub fn new(csv: bool) -> Self {
        Self {
            csv,
            delimiter: if csv { ',' } else { '\t' },
            null: if csv { String::new() } else { "\\N".into() },
            header: false,
            quote: '"',
        }
    }
}

/// Split `COPY … FROM STDIN` data into chunks with the given column names. Locations read
/// `<label>:<line>`; a line with the wrong number of fields is a [`ParseReject`]. The text
/// format's end marker `\.` ends the data.
pub fn parse_copy(
    text: &str,
    label: &str,
    opts: &CopyOptions,
    columns: &[String],
    batch_rows: usize,
) -> Result<Vec<Chunk>> {
    let mut chunks = vec![];
    let mut builder = ChunkBuilder::new(columns.to_vec());
    let mut row: i64 = 0;
    let push = |b: &mut ChunkBuilder,
                fields: Result<Vec<Option<String>>>,
                line: usize,
                raw: &str,
                row: i64| {
        let location = format!("{label}:{line}");
        match fields {
            Ok(f) if f.len() == columns.len() => {
                let refs: Vec<Option<&str>> = f.iter().map(|v| v.as_deref()).collect();
                b.push(&refs, location, raw, row);
            }
            Ok(f) => b.rejects.push(ParseReject {
                location,
                raw: raw.to_string(),
                reason: format!("expected {} fields, found {}", columns.len(), f.len()),
            }),
            Err(e) => b.rejects.push(ParseReject {
                location,
                raw: raw.to_string(),
                reason: e.to_string(),
            }),
        }
    };
    if opts.csv {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(opts.delimiter as u8)
            .quote(opts.quote as u8)
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut record = csv::StringRecord::new();
        let mut first = true;
        loop {
            let start = reader.position().clone();
            let more = reader.read_record(&mut record);
            let end = reader.position().byte() as usize;
            let raw = text
                .get(start.byte() as usize..end)
                .unwrap_or("")
                .trim_end_matches(['\r', '\n']);
            let fields = match more {
                Ok(false) => break,
                Ok(true) => {
                    if raw == "\\." {
                        break;
                    }
                    if std::mem::take(&mut first) && opts.header {
                        continue;
                    }
                    Ok(record
                        .iter()
                        .map(|f| (f != opts.null).then(|| f.to_string()))
                        .collect())
                }
                Err(e) => Err(IngestError::Read(format!("malformed CSV: {e}"))),
            };
            push(&mut builder, fields, start.line() as usize, raw, row);
            row += 1;
            if builder.len() >= batch_rows {
                let full = std::mem::replace(&mut builder, ChunkBuilder::new(columns.to_vec()));
                chunks.push(full.finish(chunks.len())?);
            }
        }
    } else {
        let mut first = true;
        let lines: Vec<&str> = text.split('\n').collect();
        let last = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line == "\\." {
                break;
            }
            if line.is_empty() && i + 1 == last {
                break; // the newline that ends the last record
            }
            if std::mem::take(&mut first) && opts.header {
                continue;
            }
            let fields = line
                .split(opts.delimiter)
                .map(|f| {
                    if f == opts.null {
                        Ok(None)
                    } else {
                        unescape_copy_text(f).map(Some)
                    }
                })
                .collect();
            push(&mut builder, fields, i + 1, line, row);
            row += 1;
            if builder.len() >= batch_rows {
                let full = std::mem::replace(&mut builder, ChunkBuilder::new(columns.to_vec()));
                chunks.push(full.finish(chunks.len())?);
            }
        }
    }
    if builder.len() > 0 || chunks.is_empty() {
        chunks.push(builder.finish(chunks.len())?);
    }
    Ok(chunks)
}

/// Undo the text format's backslash escapes (`\t`, `\n`, `\\`, octal, `\xHH`, …).
fn unescape_copy_text(f: &str) -> Result<String> {
    if !f.contains('\\') {
        return Ok(f.to_string());
    }
    let mut out: Vec<u8> = Vec::with_capacity(f.len());
    let b = f.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < b.len() && b[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < b.len() && b[i].is_ascii_hexdigit() {
                    v = v * 16 + (b[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| IngestError::Read("invalid UTF-8 after escapes".into()))
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    #[test]
    fn text_format_escapes_nulls_and_field_counts() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let data = "1\tx\\ty\n\\N\t\\101\\x42\n3\n\\.\nignored\n";
        let chunks = parse_copy(data, "copy", &CopyOptions::new(false), &cols, 100).unwrap();
        let b = &chunks[0].batch;
        assert_eq!(b.num_rows(), 2);
        let a = b
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        let bb = b
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        assert_eq!(a.value(0), "1");
        assert_eq!(bb.value(0), "x\ty");
        assert!(datafusion::arrow::array::Array::is_null(a, 1));
        assert_eq!(bb.value(1), "AB");
        assert_eq!(chunks[0].rejects.len(), 1);
        assert_eq!(chunks[0].rejects[0].location, "copy:3");
    }

    #[test]
    fn csv_format_with_header() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let mut o = CopyOptions::new(true);
        o.header = true;
        let data = "a,b\n1,\"x,y\"\n2,\n";
        let chunks = parse_copy(data, "copy", &o, &cols, 1).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].batch.num_rows() + chunks[1].batch.num_rows(), 2);
        assert!(chunks.iter().all(|c| c.rejects.is_empty()));
    }
}
