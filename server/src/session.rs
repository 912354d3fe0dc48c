//! One client connection's session: its role, settings, DataFusion context and the
//! statement currently running (so CancelRequest, disconnect and statement_timeout can
//! stop it). Statements that change the lake (DDL, UPDATE, DELETE) are carried out here
//! through the catalog; queries and INSERT go through DataFusion.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    self, Expr, Ident, ObjectName, ObjectType, SchemaName, Statement, Value,
};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use touchlake_catalog::meta::ViewDef;
use touchlake_catalog::{CatalogError, DATABASE, types};

use crate::engine::Engine;
use crate::extension::{LakeCommand, Piece};
use crate::settings::{SettingError, Settings};

mod copy;
mod lake_commands;
pub use copy::CopyIn;
use lake_commands::lake_command_schema;

/// Why a statement failed. The wire layer maps each to a SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// From the lake catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// From DataFusion (planning or execution).
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// The SQL text could not be parsed.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// SET/SHOW/RESET problem.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// Valid SQL that Touchlake does not support.
    #[error("{0}")]
    NotSupported(String),
    /// A statement the session's role may not run.
    #[error("permission denied: {0}")]
    Denied(String),
    /// CancelRequest or client disconnect.
    #[error("canceling statement due to user request")]
    Canceled,
    /// statement_timeout elapsed.
    #[error("canceling statement due to statement timeout")]
    Timeout,
    /// From an ingest run or a source definition.
    #[error(transparent)]
    Ingest(#[from] touchlake_ingest::IngestError),
    /// Bad data in a statement's input (COPY): the SQLSTATE and the message.
    #[error("{1}")]
    Data(&'static str, String),
    /// A statement sent while the transaction block has failed.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
}

type Result<T, E = SessionError> = std::result::Result<T, E>;

/// What a statement produced.
pub enum Outcome {
    /// Rows, streamed batch by batch.
    Rows(SendableRecordBatchStream),
    /// A command tag such as `CREATE TABLE` or `INSERT 0 5`.
    Command { tag: String, rows: Option<usize> },
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / ROLLBACK / END, with the tag to send.
    End(&'static str),
    /// SAVEPOINT/RELEASE/ROLLBACK TO inside a block.
    InBlock(&'static str),
    /// `COPY … FROM STDIN` is waiting for this many columns of data.
    CopyIn(usize),
}

/// A statement result plus the settings the client must be told about.
pub struct Executed {
    /// The result.
    pub outcome: Outcome,
    /// (name, value) pairs for ParameterStatus messages.
    pub parameter_status: Vec<(String, String)>,
}

impl From<Outcome> for Executed {
    fn from(outcome: Outcome) -> Self {
        Executed {
            outcome,
            parameter_status: vec![],
        }
    }
}

fn command(tag: &str) -> Executed {
    Outcome::Command {
        tag: tag.to_string(),
        rows: None,
    }
    .into()
}

/// One parsed statement: PostgreSQL SQL, or one of Touchlake's own
/// (`CREATE SOURCE`, `OPTIMIZE`, …; see [`crate::extension`]).
// sqlparser's Statement is large; a Command lives only while one statement runs.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Command {
    /// A statement of the PostgreSQL grammar.
    Sql(Statement),
    /// A Touchlake statement.
    Lake(LakeCommand),
}

impl Command {
    /// ROLLBACK TO SAVEPOINT (which can leave a failed block).
    pub fn is_rollback_to(&self) -> bool {
        matches!(
            self,
            Command::Sql(Statement::Rollback {
                savepoint: Some(_),
                ..
            })
        )
    }
}

/// A statement prepared by the extended protocol.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The SQL text as received.
    pub sql: String,
    /// The parsed statement (None for an empty query).
    pub statement: Option<Command>,
    /// DataFusion's plan, for queries and INSERT (with `$n` placeholders).
    pub plan: Option<LogicalPlan>,
}

/// One connection's session.
pub struct Session {
    /// Shared server state.
    pub engine: Arc<Engine>,
    /// The role this connection authenticated as.
    pub user: String,
    ctx: SessionContext,
    settings: Mutex<Settings>,
    current: Mutex<Option<CancellationToken>>,
    watch: Mutex<Option<Arc<tokio::net::TcpStream>>>,
    parser: PostgresCompatibilityParser,
    copy: Mutex<Option<CopyIn>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("user", &self.user).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// A new session for `user` with the startup packet's `options`.
    pub fn new(
        engine: Arc<Engine>,
        user: &str,
        startup: &BTreeMap<String, String>,
    ) -> Result<Session> {
        let ctx = engine.new_context(user)?;
        let settings = Settings::new(
            user,
            startup,
            engine.config.statement_timeout_ms,
            &engine.visible_settings,
        );
        let s = Session {
            engine,
            user: user.to_string(),
            ctx,
            settings: Mutex::new(settings),
            current: Mutex::new(None),
            watch: Mutex::new(None),
            parser: PostgresCompatibilityParser::new(),
            copy: Mutex::new(None),
        };
        s.apply_settings()?;
        Ok(s)
    }

    /// Watch this socket (a duplicate of the connection's) for the client going away.
    pub fn watch_socket(&self, socket: tokio::net::TcpStream) {
        *lock(&self.watch) = Some(Arc::new(socket));
    }

    /// Settings reported to the client at startup.
    pub fn startup_parameters(&self) -> Vec<(String, String)> {
        let s = lock(&self.settings);
        crate::settings::REPORTED
            .iter()
            .filter_map(|name| s.get(name).map(|v| (name.to_string(), v.to_string())))
            .collect()
    }

    /// Cancel the running statement, if any (CancelRequest).
    pub fn cancel(&self) {
        if let Some(t) = lock(&self.current).as_ref() {
            t.cancel();
        }
    }

    /// Split and parse a query string into statements (PostgreSQL dialect, with the
    /// pg_catalog compatibility rewrites).
    pub fn parse(&self, sql: &str) -> Result<Vec<Command>> {
        if let Some(pieces) = crate::extension::split(sql).map_err(SessionError::Syntax)? {
            let mut out = vec![];
            for p in pieces {
                match p {
                    Piece::Lake(c) => out.push(Command::Lake(c)),
                    Piece::Sql(text) => {
                        out.extend(self.parse_sql(&text)?.into_iter().map(Command::Sql))
                    }
                }
            }
            return Ok(out);
        }
        Ok(self.parse_sql(sql)?.into_iter().map(Command::Sql).collect())
    }

    fn parse_sql(&self, sql: &str) -> Result<Vec<Statement>> {
        // A bug in a rewrite must not take the connection down: a panic is an error.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::compat::parse(&self.parser, sql)
        }))
        .map_err(|_| {
            SessionError::DataFusion(DataFusionError::Internal(
                "the statement could not be parsed (internal error in a rewrite)".into(),
            ))
        })?;
        let mut stmts = parsed.map_err(SessionError::Syntax)?;
        if crate::compat::too_deep(&stmts) {
            return Err(SessionError::Data(
                "54001",
                format!(
                    "stack depth limit exceeded: the statement nests expressions or subqueries \
                     more than {} levels deep (a long chain of OR or + is one level per term; \
                     use IN (…) or an array instead)",
                    crate::compat::MAX_NESTING
                ),
            ));
        }
        for s in &mut stmts {
            crate::compat::rewrite(s);
            match s {
                Statement::Query(q) => crate::naming::name_columns(q),
                Statement::CreateView(v) => crate::naming::name_columns(&mut v.query),
                _ => {}
            }
        }
        Ok(stmts)
    }

    /// Push settings into DataFusion's config (default schema, time zone, extra options).
    fn apply_settings(&self) -> Result<()> {
        let s = lock(&self.settings).clone();
        let schema = s
            .search_path()
            .into_iter()
            .next()
            .unwrap_or_else(|| "public".into());
        // current_schema() answers from the search_path (pg_catalog's version says "public").
        self.ctx
            .register_udf(crate::engine::constant_udf("current_schema", schema));
        self.ctx
            .register_udf(crate::current_setting::udf(s.clone()));
        if let Some(pg) = self
            .ctx
            .catalog(DATABASE)
            .and_then(|c| c.schema("pg_catalog"))
            && let Some(pg) = (pg.as_ref() as &dyn std::any::Any)
                .downcast_ref::<crate::pg_settings::SessionPgCatalog>()
        {
            pg.update(&s)?;
        }
        let state = self.ctx.state_ref();
        let mut state = state.write();
        let opts = state.config_mut().options_mut();
        let schema = s
            .search_path()
            .into_iter()
            .next()
            .unwrap_or_else(|| "public".into());
        opts.catalog.default_schema = schema;
        let tz = s.time_zone().to_string();
        opts.execution.time_zone = Some(tz);
        for (k, v) in s.all() {
            if let Some(df_key) = k.strip_prefix("datafusion.") {
                opts.set(&format!("datafusion.{df_key}"), v)?;
            }
        }
        Ok(())
    }

    /// Begin a statement: a fresh cancellation token (cancelled by CancelRequest, by the
    /// client disconnecting, or by statement_timeout).
    fn begin_statement(&self) -> StatementGuard {
        let token = CancellationToken::new();
        *lock(&self.current) = Some(token.clone());
        let mut tasks = vec![];
        if let Some(sock) = lock(&self.watch).clone() {
            let t = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 1];
                match sock.peek(&mut buf).await {
                    // EOF, an error, or a Terminate message: the client has gone.
                    Ok(0) | Err(_) => t.cancel(),
                    Ok(_) if buf[0] == b'X' => t.cancel(),
                    Ok(_) => {}
                }
            }));
        }
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(d) = lock(&self.settings).statement_timeout() {
            let t = token.clone();
            let flag = timed_out.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(d).await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                t.cancel();
            }));
        }
        StatementGuard {
            token,
            tasks,
            timed_out,
        }
    }

    /// Execute one parsed statement.
    pub async fn execute(&self, cmd: Command, tx_failed: bool) -> Result<Executed> {
        if tx_failed && !is_transaction_end(&cmd) {
            return Err(SessionError::TransactionAborted);
        }
        let guard = self.begin_statement();
        match cmd {
            Command::Sql(stmt) => {
                let fut = unpanicked(self.dispatch(stmt, None, &guard));
                guard.run(fut).await
            }
            Command::Lake(c) => {
                let fut = unpanicked(self.lake_command(c));
                guard.run(fut).await
            }
        }
    }

    /// Prepare a statement for the extended protocol: plan queries and INSERT so their
    /// parameter and result types can be described.
    pub async fn prepare(&self, sql: &str) -> Result<Prepared> {
        let mut stmts = self.parse(sql)?;
        if stmts.len() > 1 {
            return Err(SessionError::Syntax(
                "cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        let Some(stmt) = stmts.pop() else {
            return Ok(Prepared {
                sql: sql.to_string(),
                statement: None,
                plan: None,
            });
        };
        let plan = match &stmt {
            Command::Sql(sql) if goes_to_datafusion(sql) => {
                Some(unpanicked(self.plan(sql.clone())).await?)
            }
            Command::Sql(Statement::Copy {
                source,
                to: false,
                target: ast::CopyTarget::Stdin,
                options,
                legacy_options,
                ..
            }) => {
                self.plan_copy(source.clone(), options.clone(), legacy_options.clone())
                    .await?;
                None
            }
            _ => None,
        };
        Ok(Prepared {
            sql: sql.to_string(),
            statement: Some(stmt),
            plan,
        })
    }

    /// The current value of a setting.
    pub fn setting(&self, name: &str) -> Option<String> {
        lock(&self.settings).get(name).map(str::to_string)
    }

    /// Execute a prepared statement with bound parameters.
    pub async fn execute_prepared(
        &self,
        p: &Prepared,
        params: ParamValues,
        tx_failed: bool,
    ) -> Result<Executed> {
        let stmt = match p.statement.clone() {
            None => return Ok(command("")),
            Some(Command::Lake(c)) => return self.execute(Command::Lake(c), tx_failed).await,
            Some(Command::Sql(stmt)) => stmt,
        };
        if tx_failed && !is_transaction_end(&Command::Sql(stmt.clone())) {
            return Err(SessionError::TransactionAborted);
        }
        tracing::debug!(sql = %p.sql, "execute prepared");
        let guard = self.begin_statement();
        // Planned again: the prepared plan holds the table snapshots of its Parse, and a
        // prepared statement must see the data as of its Execute (as in PostgreSQL).
        let plan = match &p.plan {
            Some(_) => Some(
                unpanicked(self.plan(stmt.clone()))
                    .await?
                    .replace_params_with_values(&params)?,
            ),
            None => None,
        };
        let fut = unpanicked(self.dispatch(stmt, plan, &guard));
        guard.run(fut).await
    }

    async fn plan(&self, mut stmt: Statement) -> Result<LogicalPlan> {
        // MATCH_RECOGNIZE clauses run first; the statement reads their results.
        let temps = self.expand_match_recognize(&mut stmt).await?;
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(stmt)))
            .await?;
        drop(temps);
        Ok(plan)
    }

    /// Run the statement's MATCH_RECOGNIZE clauses and replace each with a read of its
    /// matches (temporary tables, dropped once the statement is planned).
    async fn expand_match_recognize(
        &self,
        stmt: &mut Statement,
    ) -> Result<Vec<crate::match_recognize::TempTable>> {
        use crate::match_recognize as mr;
        let scopes = mr::clause_ctes(stmt);
        let found = mr::clauses(stmt);
        let mut temps = vec![];
        if found.is_empty() {
            return Ok(temps);
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let external = |e: mr::MatchError| DataFusionError::External(Box::new(e));
        let with = match &*stmt {
            Statement::Query(q) => q.with.clone(),
            _ => None,
        };
        let mut replacements = vec![];
        for (k, t) in found.into_iter().enumerate() {
            let clause = mr::Clause::new(t).map_err(external)?;
            // A clause inside WITH entry i sees the entries before it.
            let with = match (scopes.get(k).copied().flatten(), &with) {
                (Some(i), Some(w)) => Some(ast::With {
                    cte_tables: w.cte_tables[..i].to_vec(),
                    ..w.clone()
                })
                .filter(|w| !w.cte_tables.is_empty()),
                _ => with.clone(),
            };
            let sql = clause.input_sql(with.as_ref()).map_err(external)?;
            let inner = mr::parse(&sql)
                .map_err(SessionError::Syntax)?
                .into_iter()
                .next()
                .ok_or_else(|| SessionError::Syntax("empty MATCH_RECOGNIZE input".into()))?;
            let plan = Box::pin(self.plan(inner)).await?;
            let df = self.ctx.execute_logical_plan(plan).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            // The input is held in memory while it is matched (and copied once into one
            // batch): it counts against the query memory pool, so an input past the limit
            // fails with 53200 instead of growing the process without bound.
            let reservation =
                datafusion::execution::memory_pool::MemoryConsumer::new("MATCH_RECOGNIZE input")
                    .register(&self.ctx.runtime_env().memory_pool);
            let mut stream = df.execute_stream().await?;
            let mut batches = vec![];
            while let Some(b) = stream.next().await {
                let b = b?;
                reservation.try_grow(b.get_array_memory_size())?;
                batches.push(b);
            }
            reservation.try_grow(reservation.size())?;
            let name = format!(
                "m{}",
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            // Matching is seconds of CPU at worst (its step budget): on a blocking thread,
            // so the async workers keep serving other connections meanwhile.
            let table = name.clone();
            let (batch, derived) =
                tokio::task::spawn_blocking(move || mr::run(&clause, &batches, schema, &table))
                    .await
                    .map_err(|e| {
                        DataFusionError::Internal(format!("MATCH_RECOGNIZE matching failed: {e}"))
                    })??;
            drop(reservation);
            temps.push(mr::TempTable::register(&self.ctx, name, batch)?);
            replacements.push(derived);
        }
        mr::replace(stmt, replacements);
        Ok(temps)
    }

    async fn dispatch(
        &self,
        stmt: Statement,
        plan: Option<LogicalPlan>,
        guard: &StatementGuard,
    ) -> Result<Executed> {
        match stmt {
            Statement::Query(_) | Statement::Explain { .. } | Statement::Insert(_) => {
                let insert_target = match &stmt {
                    Statement::Insert(i) => match &i.table {
                        ast::TableObject::TableName(n) => Some(self.resolve(n)?),
                        _ => None,
                    },
                    _ => None,
                };
                let plan = match plan {
                    Some(p) => p,
                    None => self.plan(stmt).await?,
                };
                self.run_plan(plan, insert_target, guard).await
            }
            Statement::Set(set) => self.set(set),
            Statement::ShowVariable { variable } => self.show(&variable),
            Statement::Reset(r) => {
                let status = match r.reset {
                    ast::Reset::ALL => lock(&self.settings).reset_all(),
                    ast::Reset::ConfigurationParameter(name) => lock(&self.settings)
                        .reset(&object_name_text(&name))?
                        .into_iter()
                        .collect(),
                };
                self.apply_settings()?;
                Ok(Executed {
                    outcome: Outcome::Command {
                        tag: "RESET".into(),
                        rows: None,
                    },
                    parameter_status: status,
                })
            }
            Statement::StartTransaction { .. } => Ok(Outcome::Begin.into()),
            Statement::Commit { .. } => Ok(Outcome::End("COMMIT").into()),
            Statement::Rollback {
                savepoint: None, ..
            } => Ok(Outcome::End("ROLLBACK").into()),
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Ok(Outcome::InBlock("ROLLBACK").into()),
            Statement::Savepoint { .. } => Ok(Outcome::InBlock("SAVEPOINT").into()),
            Statement::ReleaseSavepoint { .. } => Ok(Outcome::InBlock("RELEASE").into()),
            Statement::Discard { .. } => {
                let status = lock(&self.settings).reset_all();
                self.apply_settings()?;
                Ok(Executed {
                    outcome: Outcome::Command {
                        tag: "DISCARD ALL".into(),
                        rows: None,
                    },
                    parameter_status: status,
                })
            }
            Statement::CreateSchema {
                schema_name,
                if_not_exists,
                ..
            } => {
                let name = match &schema_name {
                    SchemaName::Simple(n) | SchemaName::NamedAuthorization(n, _) => last_ident(n)?,
                    SchemaName::UnnamedAuthorization(i) => ident(i),
                };
                self.engine
                    .lake
                    .create_schema(&name, if_not_exists, &self.user)
                    .await?;
                Ok(command("CREATE SCHEMA"))
            }
            Statement::CreateTable(ct) => self.create_table(ct, guard).await,
            Statement::CreateView(cv) => {
                if cv.materialized {
                    return Err(SessionError::NotSupported(
                        "materialized views are not supported yet".into(),
                    ));
                }
                let (schema, name) = self.resolve(&cv.name)?;
                // Plan once now so a broken definition is refused at CREATE time.
                self.plan(Statement::Query(cv.query.clone())).await?;
                let def = ViewDef {
                    sql: cv.query.to_string(),
                    columns: cv.columns.iter().map(|c| ident(&c.name)).collect(),
                    owner: self.user.clone(),
                    created_at: chrono::Utc::now().to_rfc3339(),
                };
                self.engine
                    .lake
                    .create_view(&schema, &name, def, cv.or_replace)
                    .await?;
                Ok(command("CREATE VIEW"))
            }
            Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => {
                let lake = &self.engine.lake;
                for n in &names {
                    match object_type {
                        ObjectType::Table => {
                            let (s, t) = self.resolve(n)?;
                            lake.drop_table(&s, &t, if_exists).await?;
                        }
                        ObjectType::View => {
                            let (s, t) = self.resolve(n)?;
                            lake.drop_view(&s, &t, if_exists).await?;
                        }
                        ObjectType::Schema => {
                            lake.drop_schema(&last_ident(n)?, if_exists, cascade)
                                .await?
                        }
                        other => {
                            return Err(SessionError::NotSupported(format!(
                                "DROP {other} is not supported"
                            )));
                        }
                    }
                }
                let tag = match object_type {
                    ObjectType::Table => "DROP TABLE",
                    ObjectType::View => "DROP VIEW",
                    _ => "DROP SCHEMA",
                };
                Ok(command(tag))
            }
            Statement::Update(u) => self.update(u).await,
            Statement::Delete(d) => self.delete(d).await,
            Statement::Call(f) if object_name_text(&f.name).eq_ignore_ascii_case("ingest") => {
                let names = call_text_args(&f)?;
                self.call_ingest(names).await
            }
            Statement::Call(f)
                if object_name_text(&f.name).eq_ignore_ascii_case("identity_run") =>
            {
                let args = call_text_args(&f)?;
                self.call_identity_run(args).await
            }
            Statement::Copy {
                source,
                to: false,
                target: ast::CopyTarget::Stdin,
                options,
                legacy_options,
                values,
            } if values.is_empty() => self.begin_copy(source, options, legacy_options).await,
            Statement::Copy { to: true, .. } => Err(SessionError::NotSupported(
                "COPY … TO is not supported; run the query instead".into(),
            )),
            Statement::Copy { .. } => Err(SessionError::NotSupported(
                "only COPY … FROM STDIN is supported (psql \\copy sends that)".into(),
            )),
            other => {
                // Anything else DataFusion plans (e.g. SHOW TABLES) is allowed if it is read-only.
                let plan = self.plan(other).await?;
                self.run_plan(plan, None, guard).await
            }
        }
    }

    /// Run a DataFusion plan: a query streams; INSERT commits and returns its count.
    async fn run_plan(
        &self,
        plan: LogicalPlan,
        insert_target: Option<(String, String)>,
        guard: &StatementGuard,
    ) -> Result<Executed> {
        match &plan {
            LogicalPlan::Ddl(_) => {
                return Err(SessionError::NotSupported(format!(
                    "this statement is not supported: {}",
                    plan.display()
                )));
            }
            LogicalPlan::Copy(_) => {
                return Err(SessionError::Denied(
                    "COPY … TO writes server files and is not allowed".into(),
                ));
            }
            LogicalPlan::Statement(_) => {
                return Err(SessionError::NotSupported(format!(
                    "this statement is not supported: {}",
                    plan.display()
                )));
            }
            _ => {}
        }
        let is_dml = matches!(plan, LogicalPlan::Dml(_));
        let df = self.ctx.execute_logical_plan(plan).await?;
        let stream = df.execute_stream().await?;
        if is_dml {
            let batches: Vec<RecordBatch> = stream
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            if let Some((s, t)) = insert_target {
                self.engine.lake.invalidate(&s, &t).await;
            }
            let n = batches
                .first()
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .map(|a| a.value(0))
                })
                .unwrap_or(0);
            return Ok(Outcome::Command {
                tag: "INSERT".into(),
                rows: Some(n as usize),
            }
            .into());
        }
        Ok(Outcome::Rows(self.present(stream, guard)).into())
    }

    /// The schema the client sees: timestamptz columns in the session time zone.
    fn present_schema(&self, schema: &Schema) -> Schema {
        let tz = lock(&self.settings).time_zone().to_string();
        Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Timestamp(u, Some(_)) => f
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::Timestamp(*u, Some(tz.clone().into()))),
                    _ => client_field(f),
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Wrap a result stream: stop on cancel/timeout/disconnect, render timestamptz in the
    /// session time zone.
    fn present(
        &self,
        inner: SendableRecordBatchStream,
        guard: &StatementGuard,
    ) -> SendableRecordBatchStream {
        let schema: SchemaRef = Arc::new(self.present_schema(inner.schema().as_ref()));
        let token = guard.token.clone();
        let timed_out = guard.timed_out.clone();
        let stream = Guarded {
            inner: Some(inner),
            cancelled: Box::pin(token.clone().cancelled_owned()),
            token,
            timed_out,
            schema: schema.clone(),
            _tasks: AbortOnDrop(guard.tasks.iter().map(|t| t.abort_handle()).collect()),
        };
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }

    fn set(&self, set: ast::Set) -> Result<Executed> {
        let mut status = vec![];
        {
            let mut s = lock(&self.settings);
            match set {
                ast::Set::SingleAssignment {
                    variable, values, ..
                } => {
                    let name = object_name_text(&variable);
                    let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
                    let r = if value.eq_ignore_ascii_case("default") {
                        s.reset(&name)?
                    } else {
                        s.set(&name, &value)?
                    };
                    status.extend(r);
                }
                ast::Set::SetTimeZone { value, .. } => {
                    let v = value_text(&value);
                    let r = if v.eq_ignore_ascii_case("default") || v.eq_ignore_ascii_case("local")
                    {
                        s.reset("timezone")?
                    } else {
                        s.set("timezone", &v)?
                    };
                    status.extend(r);
                }
                ast::Set::SetNames { charset_name, .. } => {
                    status.extend(s.set("client_encoding", &charset_name.value)?);
                }
                ast::Set::SetNamesDefault {} => {}
                ast::Set::SetTransaction { .. } | ast::Set::SetSessionParam(_) => {}
                ast::Set::SetRole { role_name, .. } => {
                    if let Some(r) = role_name
                        && r.value != self.user
                    {
                        return Err(SessionError::Denied(format!(
                            "cannot set role to \"{}\"",
                            r.value
                        )));
                    }
                }
                ast::Set::MultipleAssignments { assignments } => {
                    for a in assignments {
                        status.extend(s.set(&object_name_text(&a.name), &value_text(&a.value))?);
                    }
                }
                other => {
                    return Err(SessionError::NotSupported(format!(
                        "{other} is not supported"
                    )));
                }
            }
        }
        self.apply_settings()?;
        Ok(Executed {
            outcome: Outcome::Command {
                tag: "SET".into(),
                rows: None,
            },
            parameter_status: status,
        })
    }

    fn show(&self, variable: &[Ident]) -> Result<Executed> {
        let name = show_name(variable);
        let s = lock(&self.settings);
        let batch = if name == "all" {
            let (names, values): (Vec<_>, Vec<_>) = s
                .all()
                .map(|(k, v)| (crate::settings::canonical(k), v.clone()))
                .unzip();
            let descr: Vec<String> = names.iter().map(|_| String::new()).collect();
            RecordBatch::try_new(
                show_all_schema(),
                vec![
                    Arc::new(StringArray::from(names)) as ArrayRef,
                    Arc::new(StringArray::from(values)),
                    Arc::new(StringArray::from(descr)),
                ],
            )
            .map_err(DataFusionError::from)?
        } else {
            let value = s
                .get(&name)
                .ok_or_else(|| SettingError::Unknown(name.clone()))?
                .to_string();
            let schema = Arc::new(Schema::new(vec![Field::new(&name, DataType::Utf8, true)]));
            RecordBatch::try_new(
                schema,
                vec![Arc::new(StringArray::from(vec![value])) as ArrayRef],
            )
            .map_err(DataFusionError::from)?
        };
        let schema = batch.schema();
        let stream = futures::stream::iter(vec![Ok(batch)]);
        Ok(Outcome::Rows(Box::pin(RecordBatchStreamAdapter::new(schema, stream))).into())
    }

    /// Resolve a possibly qualified name to (schema, relation), folding unquoted names
    /// to lower case as PostgreSQL does.
    pub fn resolve(&self, name: &ObjectName) -> Result<(String, String)> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| {
                p.as_ident()
                    .map(ident)
                    .ok_or_else(|| SessionError::Syntax(format!("invalid name {name}")))
            })
            .collect::<Result<_>>()?;
        let default_schema = lock(&self.settings)
            .search_path()
            .into_iter()
            .next()
            .unwrap_or_else(|| "public".into());
        match parts.as_slice() {
            [t] => Ok((default_schema, t.clone())),
            [s, t] => Ok((s.clone(), t.clone())),
            [d, s, t] if d == DATABASE => Ok((s.clone(), t.clone())),
            [d, _, _] => Err(SessionError::NotSupported(format!(
                "cross-database references are not implemented: {d}"
            ))),
            _ => Err(SessionError::Syntax(format!(
                "improper qualified name: {name}"
            ))),
        }
    }

    async fn create_table(&self, ct: ast::CreateTable, guard: &StatementGuard) -> Result<Executed> {
        let (schema, name) = self.resolve(&ct.name)?;
        let lake = &self.engine.lake;
        if let Some(query) = ct.query {
            // CREATE TABLE … AS SELECT: one Delta commit holding the table and its rows.
            let plan = self.plan(Statement::Query(query.clone())).await?;
            let exprs: Vec<datafusion::logical_expr::Expr> = plan
                .schema()
                .iter()
                .map(|(q, f)| {
                    let col = datafusion::logical_expr::Expr::Column(
                        datafusion::common::Column::new(q.cloned(), f.name()),
                    );
                    datafusion::logical_expr::cast(col, types::storable(f.data_type()))
                        .alias(f.name())
                })
                .collect();
            // Columns of a CREATE TABLE AS are nullable, as in PostgreSQL.
            let fields: Vec<Field> = plan
                .schema()
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), types::storable(f.data_type()), true))
                .collect();
            let out_schema = datafusion::common::DFSchema::try_from(Schema::new(fields))?;
            let plan =
                LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new_with_schema(
                    exprs,
                    Arc::new(plan),
                    Arc::new(out_schema),
                )?);
            let created = lake
                .create_table_as(&schema, &name, plan, ct.if_not_exists)
                .await?;
            let rows = if created {
                self.count_rows(&schema, &name, None).await? as usize
            } else {
                0
            };
            let _ = guard;
            return Ok(Outcome::Command {
                tag: "SELECT".into(),
                rows: Some(rows),
            }
            .into());
        }
        let mut fields = vec![];
        for c in &ct.columns {
            let dt = types::sql_to_arrow(&c.data_type)?;
            let not_null = c.options.iter().any(|o| {
                matches!(
                    o.option,
                    ast::ColumnOption::NotNull | ast::ColumnOption::PrimaryKey(_)
                )
            });
            fields.push(Field::new(ident(&c.name), dt, !not_null));
        }
        if fields.is_empty() {
            return Err(SessionError::NotSupported(
                "a table needs at least one column".into(),
            ));
        }
        lake.create_table(
            &schema,
            &name,
            Arc::new(Schema::new(fields)),
            ct.if_not_exists,
        )
        .await?;
        Ok(command("CREATE TABLE"))
    }

    /// `SELECT count(*) FROM schema.table [WHERE predicate]`.
    async fn count_rows(&self, schema: &str, table: &str, predicate: Option<&str>) -> Result<u64> {
        let where_clause = predicate.map(|p| format!(" WHERE {p}")).unwrap_or_default();
        let sql = format!(
            "SELECT count(*) FROM {}{where_clause}",
            quote_qualified(schema, table)
        );
        let batches = self.ctx.sql(&sql).await?.collect().await?;
        Ok(batches
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .map(|a| a.value(0))
            })
            .unwrap_or(0) as u64)
    }

    async fn update(&self, u: ast::Update) -> Result<Executed> {
        if u.from.is_some() {
            return Err(SessionError::NotSupported(
                "UPDATE … FROM is not supported".into(),
            ));
        }
        let ast::TableFactor::Table { name, .. } = &u.table.relation else {
            return Err(SessionError::NotSupported(
                "UPDATE of this target is not supported".into(),
            ));
        };
        let (schema, table) = self.resolve(name)?;
        let mut assignments = vec![];
        for a in &u.assignments {
            let col = match &a.target {
                ast::AssignmentTarget::ColumnName(n) => last_ident(n)?,
                ast::AssignmentTarget::Tuple(_) => {
                    return Err(SessionError::NotSupported(
                        "UPDATE SET (a, b) = … is not supported".into(),
                    ));
                }
            };
            assignments.push((col, a.value.to_string()));
        }
        let state = Arc::new(self.ctx.state());
        let n = self
            .engine
            .lake
            .update(
                &schema,
                &table,
                u.selection.map(|e| e.to_string()),
                assignments,
                state,
            )
            .await?;
        Ok(Outcome::Command {
            tag: "UPDATE".into(),
            rows: Some(n as usize),
        }
        .into())
    }

    async fn delete(&self, d: ast::Delete) -> Result<Executed> {
        let tables = match &d.from {
            ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
        };
        let [twj] = tables.as_slice() else {
            return Err(SessionError::NotSupported(
                "DELETE from several tables is not supported".into(),
            ));
        };
        if d.using.is_some() || !twj.joins.is_empty() {
            return Err(SessionError::NotSupported(
                "DELETE … USING is not supported".into(),
            ));
        }
        let ast::TableFactor::Table { name, .. } = &twj.relation else {
            return Err(SessionError::NotSupported(
                "DELETE of this target is not supported".into(),
            ));
        };
        let (schema, table) = self.resolve(name)?;
        let predicate = d.selection.map(|e| e.to_string());
        // delta-rs does not always know how many rows a delete removed; count them first.
        let before = self
            .count_rows(&schema, &table, predicate.as_deref())
            .await?;
        let state = Arc::new(self.ctx.state());
        let n = self
            .engine
            .lake
            .delete(&schema, &table, predicate, state)
            .await?
            .unwrap_or(before);
        Ok(Outcome::Command {
            tag: "DELETE".into(),
            rows: Some(n as usize),
        }
        .into())
    }
}

/// Held while a statement runs: its cancellation token and watcher tasks.
pub struct StatementGuard {
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    timed_out: Arc<std::sync::atomic::AtomicBool>,
}

impl StatementGuard {
    /// Run `fut` unless the statement is cancelled first.
    async fn run(
        &self,
        fut: impl std::future::Future<Output = Result<Executed>>,
    ) -> Result<Executed> {
        let res = tokio::select! {
            r = fut => r,
            _ = self.token.cancelled() => Err(self.cancel_error()),
        };
        // Streams carry their own abort handles; plain commands are done here.
        if !matches!(
            res,
            Ok(Executed {
                outcome: Outcome::Rows(_),
                ..
            })
        ) {
            for t in &self.tasks {
                t.abort();
            }
        }
        res
    }

    fn cancel_error(&self) -> SessionError {
        if self.timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            SessionError::Timeout
        } else {
            SessionError::Canceled
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// A result stream that ends with an error as soon as its statement is cancelled,
/// dropping (and so stopping) the DataFusion stream underneath.
struct Guarded {
    inner: Option<SendableRecordBatchStream>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    token: CancellationToken,
    timed_out: Arc<std::sync::atomic::AtomicBool>,
    schema: SchemaRef,
    _tasks: AbortOnDrop,
}

impl Stream for Guarded {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inner.is_none() {
            return Poll::Ready(None);
        }
        if self.token.is_cancelled() || self.cancelled.as_mut().poll(cx).is_ready() {
            self.inner = None;
            let e = if self.timed_out.load(std::sync::atomic::Ordering::SeqCst) {
                SessionError::Timeout
            } else {
                SessionError::Canceled
            };
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(e)))));
        }
        let schema = self.schema.clone();
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(retag_time_zones(batch, &schema))),
            Poll::Ready(None) => {
                self.inner = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

fn retag_time_zones(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> datafusion::error::Result<RecordBatch> {
    if batch.schema().as_ref() == schema.as_ref() {
        return Ok(batch);
    }
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                datafusion::arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// A result field as the client should see it. `datafusion-pg-catalog` tags OID columns
/// with `pg.oid_alias` metadata, and a cast (`c.oid::bigint`) keeps the tag on an Int64
/// column, which would then be described as `oid` but sent as int8. Remove when the cast
/// drops the metadata upstream.
fn client_field(f: &Arc<Field>) -> Field {
    let f = f.as_ref().clone();
    if f.metadata()
        .contains_key(arrow_pg::datatypes::PG_OID_ALIAS_KEY)
        && !matches!(f.data_type(), DataType::Int32 | DataType::UInt32)
    {
        let mut md = f.metadata().clone();
        md.remove(arrow_pg::datatypes::PG_OID_ALIAS_KEY);
        return f.with_metadata(md);
    }
    f
}

/// Result columns of a prepared statement (empty for commands).
pub fn result_schema(p: &Prepared) -> SchemaRef {
    if let Some(plan) = &p.plan {
        if matches!(plan, LogicalPlan::Dml(_) | LogicalPlan::Ddl(_)) {
            return Arc::new(Schema::empty());
        }
        let fields: Vec<Field> = plan
            .schema()
            .as_arrow()
            .fields()
            .iter()
            .map(client_field)
            .collect();
        return Arc::new(Schema::new(fields));
    }
    match &p.statement {
        Some(Command::Lake(c)) => lake_command_schema(c),
        Some(Command::Sql(Statement::Call(f)))
            if object_name_text(&f.name).eq_ignore_ascii_case("ingest") =>
        {
            lake_commands::ingest_schema()
        }
        Some(Command::Sql(Statement::Call(f)))
            if object_name_text(&f.name).eq_ignore_ascii_case("identity_run") =>
        {
            lake_commands::identity_schema()
        }
        Some(Command::Sql(Statement::ShowVariable { variable })) => {
            let name = show_name(variable);
            if name == "all" {
                show_all_schema()
            } else {
                Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]))
            }
        }
        _ => Arc::new(Schema::empty()),
    }
}

/// Types of parameters that appear directly under a cast (`$1::bigint`).
pub fn cast_parameter_types(plan: &LogicalPlan) -> std::collections::HashMap<String, DataType> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr as DfExpr;
    let mut out = std::collections::HashMap::new();
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|e| {
            e.apply(|e| {
                if let DfExpr::Cast(c) = e
                    && let DfExpr::Placeholder(p) = c.expr.as_ref()
                {
                    out.entry(p.id.clone())
                        .or_insert_with(|| c.field.data_type().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The text arguments of `CALL f('a', 'b')`.
fn call_text_args(f: &ast::Function) -> Result<Vec<String>> {
    let mut out = vec![];
    if let ast::FunctionArguments::List(list) = &f.args {
        for a in &list.args {
            match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Value(v))) => {
                    match &v.value {
                        Value::SingleQuotedString(s) => out.push(s.clone()),
                        other => {
                            return Err(SessionError::Syntax(format!(
                                "{}: expected source names as strings, got {other}",
                                f.name
                            )));
                        }
                    }
                }
                other => {
                    return Err(SessionError::Syntax(format!(
                        "{}: expected source names as strings, got {other}",
                        f.name
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// A panic inside `fut` (planning, running, a lake command) is that statement's error
/// (XX000): the connection and the server stay up.
async fn unpanicked<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(SessionError::DataFusion(DataFusionError::Internal(
                "internal error while running the statement".into(),
            )))
        })
}

fn is_transaction_end(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Sql(Statement::Rollback { .. } | Statement::Commit { .. })
    )
}

fn goes_to_datafusion(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::Query(_) | Statement::Insert(_) | Statement::Explain { .. }
    )
}

fn show_all_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("setting", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
    ]))
}

fn show_name(variable: &[Ident]) -> String {
    let n = variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    match n.as_str() {
        "time zone" => "timezone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        "session authorization" => "session_authorization".into(),
        // A qualified name (`touchlake.memory_limit_mb`, `myapp.tenant`) comes as parts.
        _ => n.replace(' ', "."),
    }
}

/// An identifier as PostgreSQL sees it: unquoted names fold to lower case.
pub fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn last_ident(n: &ObjectName) -> Result<String> {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(ident)
        .ok_or_else(|| SessionError::Syntax(format!("invalid name {n}")))
}

fn object_name_text(n: &ObjectName) -> String {
    n.0.iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.clone())
        .collect::<Vec<_>>()
        .join(".")
}

fn value_text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DoubleQuotedString(s)
            | Value::EscapedStringLiteral(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            Value::Boolean(b) => {
                if *b {
                    "on".into()
                } else {
                    "off".into()
                }
            }
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => parts
            .iter()
            .map(|p| p.value.clone())
            .collect::<Vec<_>>()
            .join("."),
        Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => format!("-{}", value_text(expr)),
        Expr::UnaryOp {
            op: ast::UnaryOperator::Plus,
            expr,
        } => format!("+{}", value_text(expr)),
        other => other.to_string(),
    }
}

fn quote_qualified(schema: &str, table: &str) -> String {
    format!(
        "\"{}\".\"{}\"",
        schema.replace('"', "\"\""),
        table.replace('"', "\"\"")
    )
}
