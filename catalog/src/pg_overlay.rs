//! `pg_catalog` as clients see it: `datafusion-pg-catalog`'s tables, shared by every
//! session of a server, with the columns it leaves blank filled in from the lake
//! (`pg_attribute.atttypmod` carries `numeric(p,s)`), and with stable OIDs: the library
//! numbers schemas and tables in the order it first meets them, so a table's OID would
//! change from one server start to the next. Every OID it hands out is replaced here by
//! one derived from the object's name, the same in every connection, server and restart.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use crate::lake::Lake;

/// The OID of `numeric` in pg_type.
const NUMERIC_OID: i32 = 1700;

/// Wraps the pg_catalog schema provider and completes `pg_attribute`.
#[derive(Debug)]
pub struct PgCatalogOverlay {
    inner: Arc<dyn SchemaProvider>,
    lake: Arc<Lake>,
}

impl PgCatalogOverlay {
    /// Overlay `inner` (a `PgCatalogSchemaProvider`) with facts from `lake`.
    pub fn new(inner: Arc<dyn SchemaProvider>, lake: Arc<Lake>) -> Self {
        Self { inner, lake }
    }
}

/// `pg_attribute`, computed when scanned (not when merely resolved: pg_class asks every
/// table for its schema, this one included).
#[derive(Debug)]
struct AttributeTable {
    inner: Arc<dyn SchemaProvider>,
    lake: Arc<Lake>,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

#[async_trait]
impl TableProvider for AttributeTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let t = self.compute().await?;
        t.scan(state, projection, filters, limit).await
    }
}

impl AttributeTable {
    async fn collect(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let Some(t) = self.inner.table(name).await? else {
            return Err(DataFusionError::Plan(format!("pg_catalog.{name} missing")));
        };
        SessionContext::new().read_table(t)?.collect().await
    }

    async fn compute(&self) -> Result<MemTable> {
        let Some(attr) = self.inner.table("pg_attribute").await? else {
            return Err(DataFusionError::Plan(
                "pg_catalog.pg_attribute missing".into(),
            ));
        };
        let schema = attr.schema();
        let batches = SessionContext::new().read_table(attr)?.collect().await?;
        let namespaces = pairs(&self.collect("pg_namespace").await?, "oid", "nspname")?;
        let classes = self.collect("pg_class").await?;
        let mut relations: HashMap<i32, (String, String)> = HashMap::new();
        for b in &classes {
            let (Some(oid), Some(name), Some(ns)) = (
                int_col(b, "oid"),
                str_col(b, "relname"),
                int_col(b, "relnamespace"),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                if let Some(schema) = namespaces.get(&ns.value(i)) {
                    relations.insert(oid.value(i), (schema.clone(), name.value(i).to_string()));
                }
            }
        }
        let idx = |n: &str| schema.index_of(n);
        let (rel_i, name_i, type_i, mod_i) = (
            idx("attrelid")?,
            idx("attname")?,
            idx("atttypid")?,
            idx("atttypmod")?,
        );
        let mut table_schemas: HashMap<i32, Option<datafusion::arrow::datatypes::SchemaRef>> =
            HashMap::new();
        let mut out = vec![];
        for b in batches {
            let cast = |i: usize| datafusion::arrow::compute::cast(b.column(i), &DataType::Int32);
            let rel = cast(rel_i)?;
            let typ = cast(type_i)?;
            let (Some(rel), Some(typ), Some(names), Some(mods)) = (
                rel.as_any().downcast_ref::<Int32Array>(),
                typ.as_any().downcast_ref::<Int32Array>(),
                b.column(name_i).as_any().downcast_ref::<StringArray>(),
                b.column(mod_i).as_any().downcast_ref::<Int32Array>(),
            ) else {
                out.push(b);
                continue;
            };
            let mut new_mods = Vec::with_capacity(b.num_rows());
            for i in 0..b.num_rows() {
                let mut m = mods.value(i);
                if typ.value(i) == NUMERIC_OID {
                    let oid = rel.value(i);
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        table_schemas.entry(oid)
                    {
                        let s = match relations.get(&oid) {
                            Some((s, t)) => self.lake.cached_schema(s, t).await.ok().flatten(),
                            None => None,
                        };
                        slot.insert(s);
                    }
                    if let Some(Some(s)) = table_schemas.get(&oid)
                        && let Ok(f) = s.field_with_name(names.value(i))
                        && let DataType::Decimal128(p, sc) | DataType::Decimal256(p, sc) =
                            f.data_type()
                    {
                        m = ((*p as i32) << 16 | (*sc as i32)) + 4;
                    }
                }
                new_mods.push(m);
            }
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            cols[mod_i] = Arc::new(Int32Array::from(new_mods));
            out.push(RecordBatch::try_new(b.schema(), cols)?);
        }
        MemTable::try_new(schema, vec![out])
    }
}

fn int_col(b: &RecordBatch, name: &str) -> Option<Int32Array> {
    let c = b.column_by_name(name)?;
    let c = datafusion::arrow::compute::cast(c, &DataType::Int32).ok()?;
    c.as_any().downcast_ref::<Int32Array>().cloned()
}

fn str_col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?
        .as_any()
        .downcast_ref::<StringArray>()
}

fn pairs(batches: &[RecordBatch], key: &str, value: &str) -> Result<HashMap<i32, String>> {
    let mut m = HashMap::new();
    for b in batches {
        let (Some(k), Some(v)) = (int_col(b, key), str_col(b, value)) else {
            continue;
        };
        for i in 0..b.num_rows() {
            if !k.is_null(i) && !v.is_null(i) {
                m.insert(k.value(i), v.value(i).to_string());
            }
        }
    }
    Ok(m)
}

/// Columns of pg_catalog tables that hold OIDs of databases, schemas or relations.
const OID_COLUMNS: &[&str] = &[
    "oid",
    "relnamespace",
    "relfilenode",
    "attrelid",
    "objoid",
    "objid",
    "refobjid",
    "indrelid",
    "indexrelid",
    "conrelid",
    "confrelid",
    "adrelid",
    "typrelid",
    "typnamespace",
    "ev_class",
    "inhrelid",
    "inhparent",
    "starelid",
    "connamespace",
    "pronamespace",
    "collnamespace",
    "classoid",
    "refclassoid",
    "polrelid",
    "tgrelid",
    "seqrelid",
    "partrelid",
];

/// The first OID PostgreSQL gives to user objects.
const FIRST_USER_OID: i64 = 16384;

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Library-assigned OID → stable OID, for the databases, schemas and relations it knows.
async fn stable_oids(inner: &Arc<dyn SchemaProvider>) -> Result<HashMap<i32, i32>> {
    let collect = |name: &'static str| {
        let inner = inner.clone();
        async move {
            match inner.table(name).await? {
                Some(t) => SessionContext::new().read_table(t)?.collect().await,
                None => Ok(vec![]),
            }
        }
    };
    let namespaces = pairs(&collect("pg_namespace").await?, "oid", "nspname")?;
    let databases = pairs(&collect("pg_database").await?, "oid", "datname")?;
    let mut keyed: Vec<(String, i32)> = vec![];
    for (oid, name) in &namespaces {
        keyed.push((format!("n:{name}"), *oid));
    }
    for (oid, name) in &databases {
        keyed.push((format!("d:{name}"), *oid));
    }
    for b in collect("pg_class").await? {
        let (Some(oid), Some(name), Some(ns)) = (
            int_col(&b, "oid"),
            str_col(&b, "relname"),
            int_col(&b, "relnamespace"),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            let schema = namespaces.get(&ns.value(i)).cloned().unwrap_or_default();
            keyed.push((format!("r:{schema}.{}", name.value(i)), oid.value(i)));
        }
    }
    keyed.retain(|(_, oid)| *oid as i64 >= FIRST_USER_OID);
    keyed.sort();
    let span = i32::MAX as i64 - FIRST_USER_OID;
    let mut taken = std::collections::HashSet::new();
    let mut map = HashMap::new();
    for (key, oid) in keyed {
        let mut candidate = FIRST_USER_OID + (fnv(&key) % span as u64) as i64;
        while !taken.insert(candidate) {
            candidate = FIRST_USER_OID + (candidate - FIRST_USER_OID + 1) % span;
        }
        map.insert(oid, candidate as i32);
    }
    Ok(map)
}

/// A pg_catalog table whose OIDs are replaced by stable ones when it is scanned.
#[derive(Debug)]
struct StableOidTable {
    inner: Arc<dyn SchemaProvider>,
    table: Arc<dyn TableProvider>,
}

#[async_trait]
impl TableProvider for StableOidTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        self.table.table_type()
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let map = stable_oids(&self.inner).await?;
        let schema = self.table.schema();
        let batches = SessionContext::new()
            .read_table(self.table.clone())?
            .collect()
            .await?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            for (i, f) in schema.fields().iter().enumerate() {
                if !OID_COLUMNS.contains(&f.name().as_str()) || !f.data_type().is_integer() {
                    continue;
                }
                let as_i32 = datafusion::arrow::compute::cast(&cols[i], &DataType::Int32)?;
                let Some(a) = as_i32.as_any().downcast_ref::<Int32Array>() else {
                    continue;
                };
                let remapped: Int32Array = a
                    .iter()
                    .map(|v| v.map(|v| *map.get(&v).unwrap_or(&v)))
                    .collect();
                cols[i] = datafusion::arrow::compute::cast(
                    &(Arc::new(remapped) as ArrayRef),
                    f.data_type(),
                )?;
            }
            let mut batch = RecordBatch::try_new(b.schema(), cols)?;
            // pg_database lists the one database a Touchlake server serves.
            if let Some(col) = batch.column_by_name("datname") {
                let names = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
                let names = names
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| DataFusionError::Internal("datname is not text".into()))?;
                let keep: datafusion::arrow::array::BooleanArray = names
                    .iter()
                    .map(|n| Some(n == Some(crate::DATABASE)))
                    .collect();
                batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)?;
            }
            out.push(batch);
        }
        MemTable::try_new(schema, vec![out])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogOverlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table: Arc<dyn TableProvider> = if name.eq_ignore_ascii_case("pg_attribute") {
            let Some(attr) = self.inner.table("pg_attribute").await? else {
                return Ok(None);
            };
            Arc::new(AttributeTable {
                inner: self.inner.clone(),
                lake: self.lake.clone(),
                schema: attr.schema(),
            })
        } else {
            match self.inner.table(name).await? {
                Some(t) => t,
                None => return Ok(None),
            }
        };
        let has_oids = table
            .schema()
            .fields()
            .iter()
            .any(|f| OID_COLUMNS.contains(&f.name().as_str()));
        if !has_oids {
            return Ok(Some(table));
        }
        Ok(Some(Arc::new(StableOidTable {
            inner: self.inner.clone(),
            table,
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}
