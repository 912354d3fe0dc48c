//! Built-in marts: views over the unified tables that every lake gets (created when the
//! contract tables are, left alone when they exist; `CREATE OR REPLACE VIEW` changes them).

use touchlake_catalog::meta::ViewDef;
use touchlake_catalog::{CatalogError, Lake};

/// `marts.customer_value`: per person, RFM summary, P(alive), expected purchases, 12-month
/// CLV and RFM segment, from the purchases in `unified.touchpoints`.
pub const CUSTOMER_VALUE: &str = include_str!("marts/customer_value.sql");

/// `marts.channel_attribution`: per rule-based model and channel, the credited purchases,
/// revenue and share (30-day lookback over the same person's touchpoints).
pub const CHANNEL_ATTRIBUTION: &str = include_str!("marts/channel_attribution.sql");

/// The built-in views: (schema, name, defining query).
pub fn views() -> [(&'static str, &'static str, &'static str); 2] {
    [
        ("marts", "customer_value", CUSTOMER_VALUE),
        ("marts", "channel_attribution", CHANNEL_ATTRIBUTION),
    ]
}

/// Create the built-in views that do not exist yet.
pub async fn ensure(lake: &Lake) -> touchlake_catalog::Result<()> {
    let listing = lake.listing();
    for (schema, name, sql) in views() {
        if listing
            .views
            .get(schema)
            .is_some_and(|v| v.contains_key(name))
        {
            continue;
        }
        let def = ViewDef {
            sql: sql.trim().trim_end_matches(';').to_string(),
            columns: vec![],
            owner: "touchlake".into(),
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        match lake.create_view(schema, name, def, false).await {
            Ok(()) | Err(CatalogError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
