//! Simple and extended query handlers: parse, hand statements to the [`Session`], and
//! turn its outcomes into wire responses (rows streamed batch by batch).

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::copy::{CopyHandler, send_copy_in_response};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response,
    send_ready_for_query,
};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::ParameterStatus;
use pgwire::types::format::FormatOptions;

use super::sqlstate::{error_info, to_pgwire};
use crate::session::{Executed, Outcome, Prepared, Session, SessionError};

/// The query handler shared by all connections; per-connection state lives in the
/// [`Session`] stored in the connection's extensions.
pub struct QueryHandler {
    parser: Arc<PreparedParser>,
}

impl QueryHandler {
    pub fn new() -> Self {
        QueryHandler {
            parser: Arc::new(PreparedParser),
        }
    }
}

fn session_of<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Arc<Session>>()
        .map(|s| (*s).clone())
        .ok_or_else(|| {
            PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
                "FATAL".into(),
                "08P01".into(),
                "no session for this connection".into(),
            )))
        })
}

fn format_options<C: ClientInfo>(client: &C, session: &Session) -> Arc<FormatOptions> {
    let mut f = FormatOptions::from_client_metadata(client.metadata());
    f.time_zone = session.setting("timezone").unwrap_or_else(|| "UTC".into());
    if let Some(ds) = session.setting("datestyle") {
        f.date_style = ds;
    }
    Arc::new(f)
}

/// Turn an outcome into a wire response with columns in `format`.
fn to_response(ex: Outcome, format: &Format, opts: Arc<FormatOptions>) -> PgWireResult<Response> {
    Ok(match ex {
        Outcome::Rows(stream) => {
            let schema = super::shape::wire_schema(&stream.schema());
            let fields: Arc<Vec<FieldInfo>> = Arc::new(arrow_schema_to_pg_fields(
                schema.as_ref(),
                format,
                Some(opts),
            )?);
            let f = fields.clone();
            let rows = stream
                .map(move |batch| {
                    let it: Box<
                        dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>>
                            + Send
                            + Sync,
                    > = match batch {
                        Ok(b) => match super::shape::wire_batch(b) {
                            Ok(b) => encode_recordbatch(f.clone(), b),
                            Err(e) => Box::new(std::iter::once(Err(to_pgwire(
                                SessionError::DataFusion(e.into()),
                            )))),
                        },
                        Err(e) => {
                            Box::new(std::iter::once(Err(to_pgwire(SessionError::DataFusion(e)))))
                        }
                    };
                    stream::iter(it)
                })
                .flatten();
            Response::Query(QueryResponse::new(fields, rows))
        }
        Outcome::Command { tag, rows } => {
            let mut t = Tag::new(&tag);
            if tag == "INSERT" {
                t = t.with_oid(0);
            }
            if let Some(n) = rows {
                t = t.with_rows(n);
            }
            Response::Execution(t)
        }
        Outcome::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Outcome::End(tag) => Response::TransactionEnd(Tag::new(tag)),
        Outcome::InBlock(tag) => Response::Execution(Tag::new(tag)),
        Outcome::CopyIn(columns) => Response::CopyIn(CopyResponse::new(
            0,
            columns,
            stream::empty::<PgWireResult<CopyData>>(),
        )),
    })
}

async fn send_parameter_status<C>(client: &mut C, status: &[(String, String)]) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for (k, v) in status {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                k.clone(),
                v.clone(),
            )))
            .await?;
    }
    Ok(())
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    /// Statements of one query string run one after the other, each answered before
    /// the next starts (so `SELECT …; INSERT …` reads before it writes). The first
    /// error ends the string, as in PostgreSQL.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let session = session_of(client)?;
        client.set_state(PgWireConnectionState::QueryInProgress);
        let mut status = client.transaction_status();
        let result = self
            .run_simple(client, &session, &query.query, &mut status)
            .await;
        if let Ok(true) = result {
            // COPY FROM STDIN started: ReadyForQuery comes after CopyDone/CopyFail.
            client.set_state(PgWireConnectionState::CopyInProgress(false));
            client.set_transaction_status(status);
            return Ok(());
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        if let Err(e) = result {
            // Errors while streaming rows: report, then carry on with ReadyForQuery.
            let info: pgwire::error::ErrorInfo = e.into();
            if info.is_fatal() {
                return Err(PgWireError::UserError(Box::new(info)));
            }
            client
                .feed(PgWireBackendMessage::ErrorResponse(info.into()))
                .await?;
            status = status.to_error_state();
        }
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await?;
        Ok(())
    }

    async fn do_query<C>(&self, _client: &mut C, _query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // on_query is overridden; this path is never taken.
        Ok(vec![])
    }
}

impl QueryHandler {
    async fn run_simple<C>(
        &self,
        client: &mut C,
        session: &Arc<Session>,
        sql: &str,
        status: &mut TransactionStatus,
    ) -> PgWireResult<bool>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match session.parse(sql) {
            Ok(s) => s,
            Err(e) => {
                client
                    .feed(PgWireBackendMessage::ErrorResponse(error_info(&e).into()))
                    .await?;
                *status = status.to_error_state();
                return Ok(false);
            }
        };
        if statements.is_empty() {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
            return Ok(false);
        }
        let count = statements.len();
        for (i, stmt) in statements.into_iter().enumerate() {
            let failed = matches!(status, TransactionStatus::Error);
            let rollback_to = stmt.is_rollback_to();
            match session.execute(stmt, failed).await {
                Ok(Executed {
                    outcome,
                    parameter_status,
                }) => {
                    send_parameter_status(client, &parameter_status).await?;
                    match &outcome {
                        Outcome::Begin => *status = status.to_in_transaction_state(),
                        Outcome::End(_) => *status = status.to_idle_state(),
                        Outcome::InBlock(_)
                            if rollback_to && *status == TransactionStatus::Error =>
                        {
                            *status = TransactionStatus::Transaction
                        }
                        _ => {}
                    }
                    let opts = format_options(client, session);
                    let copy_in = matches!(outcome, Outcome::CopyIn(_));
                    if copy_in && i + 1 != count {
                        session.abort_copy();
                        let e = SessionError::NotSupported(
                            "COPY FROM STDIN must be the last statement of a query string".into(),
                        );
                        client
                            .feed(PgWireBackendMessage::ErrorResponse(error_info(&e).into()))
                            .await?;
                        *status = status.to_error_state();
                        break;
                    }
                    match to_response(outcome, &Format::UnifiedText, opts)? {
                        Response::Query(q) => send_query_response(client, q, true).await?,
                        Response::CopyIn(c) => {
                            send_copy_in_response(client, c).await?;
                            return Ok(true);
                        }
                        Response::Execution(t)
                        | Response::TransactionStart(t)
                        | Response::TransactionEnd(t) => send_execution_response(client, t).await?,
                        _ => {}
                    }
                }
                Err(e) => {
                    client
                        .feed(PgWireBackendMessage::ErrorResponse(error_info(&e).into()))
                        .await?;
                    *status = status.to_error_state();
                    break;
                }
            }
        }
        Ok(false)
    }
}

/// CopyData / CopyDone / CopyFail of a `COPY … FROM STDIN`, handed to the session.
pub struct CopyInHandler;

#[async_trait]
impl CopyHandler for CopyInHandler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        session_of(client)?
            .copy_data(&copy_data.data)
            .map_err(to_pgwire)
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let done = session.finish_copy().await.map_err(to_pgwire)?;
        if let Some(n) = done.notice {
            let info = pgwire::error::ErrorInfo::new("NOTICE".into(), "00000".into(), n);
            client
                .feed(PgWireBackendMessage::NoticeResponse(info.into()))
                .await?;
        }
        send_execution_response(client, Tag::new("COPY").with_rows(done.rows)).await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Ok(s) = session_of(client) {
            s.abort_copy();
        }
        PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
            "ERROR".into(),
            "57014".into(),
            format!("COPY from stdin failed: {}", fail.message),
        )))
    }
}

/// Parses and plans statements for the extended protocol.
pub struct PreparedParser;

fn parameter_types(p: &Prepared) -> PgWireResult<Vec<Option<DataType>>> {
    let Some(plan) = &p.plan else {
        return Ok(vec![]);
    };
    let mut types = plan
        .get_parameter_types()
        .map_err(|e| to_pgwire(SessionError::DataFusion(e)))?;
    // `$1::bigint`: PostgreSQL types the parameter from the cast; DataFusion leaves it open.
    for (id, t) in crate::session::cast_parameter_types(plan) {
        if let Some(slot @ None) = types.get_mut(&id) {
            *slot = Some(t);
        }
    }
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|i| (i, v))
        })
        .collect();
    ordered.sort_by_key(|(i, _)| *i);
    let n = ordered.last().map(|(i, _)| *i).unwrap_or(0);
    let mut out = vec![None; n];
    for (i, t) in ordered {
        if i >= 1 {
            out[i - 1] = t;
        }
    }
    Ok(out)
}

#[async_trait]
impl QueryParser for PreparedParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        let p = session.prepare(sql).await.map_err(to_pgwire)?;
        Ok(Some(p))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        parameter_types(stmt)?
            .iter()
            .map(|t| match t {
                Some(t) => into_pg_type(t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let schema = super::shape::wire_schema(&crate::session::result_schema(stmt));
        arrow_schema_to_pg_fields(
            schema.as_ref(),
            format.unwrap_or(&Format::UnifiedText),
            None,
        )
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = Prepared;
    type QueryParser = PreparedParser;

    fn query_parser(&self) -> Arc<PreparedParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let prepared = &portal.statement.statement;
        let inferred = parameter_types(prepared)?;
        let server_types: Vec<Type> = inferred
            .iter()
            .map(|t| {
                t.as_ref()
                    .map(into_pg_type)
                    .transpose()
                    .map(|t| t.unwrap_or(Type::UNKNOWN))
            })
            .collect::<PgWireResult<_>>()?;
        let inferred_refs: Vec<Option<&DataType>> = inferred.iter().map(|t| t.as_ref()).collect();
        let server_refs: Vec<Option<&Type>> = server_types.iter().map(Some).collect();
        let params =
            deserialize_parameters_with_server_types(portal, &inferred_refs, &server_refs)?;
        let failed = matches!(client.transaction_status(), TransactionStatus::Error);
        let ex = session
            .execute_prepared(prepared, params, failed)
            .await
            .map_err(to_pgwire)?;
        send_parameter_status(client, &ex.parameter_status).await?;
        let opts = format_options(client, &session);
        to_response(ex.outcome, &portal.result_column_format, opts)
    }
}
