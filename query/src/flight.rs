//! Arrow Flight SQL over [`QueryService`]. Every call authenticates with
//! `authorization: Bearer <api key>` (Handshake with basic auth, the key as the password,
//! answers that bearer token); the license is the key's only license or the one named in the
//! `x-tessera-license` header.
//!
//! Calls are throttled per key id (per address without a key) before anything is looked up.
//!
//! Tickets carry only the SQL and the license named: `DoGet` authenticates and decides again,
//! so a forged or replayed ticket is just SQL from whoever presents it, enforced like any other.
//!
//! Landed: Handshake, CommandStatementQuery (GetFlightInfo + DoGet), GetCatalogs,
//! GetDbSchemas, GetTables (with and without filters and table schemas), GetTableTypes,
//! GetSqlInfo, prepared statements with parameter binding (create, bind with DoPut, execute,
//! close; a handle holds only the SQL, the license and the bound values, like a ticket).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    SqlSupportedTransaction, TicketStatementQuery,
};
use arrow_flight::{Action, IpcMessage, SchemaAsIpc};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use base64::Engine;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use futures::{Stream, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tessera_licensing::Reason;
use tessera_licensing::decision::Credential;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::service::{QueryService, ServiceError};
use crate::session::{CATALOG, QueryError};

/// The header that names the license a request runs under.
pub const LICENSE_HEADER: &str = "x-tessera-license";

/// Result schema metadata: groups withheld for describing too few persons.
pub const GROUPS_SUPPRESSED: &str = "tessera.groups_suppressed";
/// Result schema metadata: `true` when rows were cut at the license's maximum rows.
pub const ROWS_TRUNCATED: &str = "tessera.rows_truncated";

/// What a statement ticket or prepared-statement handle holds: the SQL, the license named, and
/// the bound parameters (one row, Arrow IPC, base64), if any. Nothing the server remembers.
#[derive(Debug, Serialize, Deserialize)]
struct Handle {
    sql: String,
    license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<String>,
}

impl Handle {
    fn parse(bytes: &[u8]) -> Result<Handle, Status> {
        serde_json::from_slice(bytes)
            .map_err(|_| Status::invalid_argument("not a statement handle of this server"))
    }

    /// The bound values, `$1` first.
    fn values(&self) -> Result<Vec<ScalarValue>, Status> {
        let Some(encoded) = &self.params else {
            return Ok(Vec::new());
        };
        let bad =
            || Status::invalid_argument("the handle's parameters are damaged: bind them again");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| bad())?;
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)
            .map_err(|_| bad())?;
        let mut values = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|_| bad())?;
            for column in batch.columns() {
                values.push(ScalarValue::try_from_array(column, 0).map_err(|_| bad())?);
            }
        }
        Ok(values)
    }
}

/// One row of parameter values as the handle's base64 Arrow IPC.
fn encode_params(batch: &RecordBatch) -> Result<String, Status> {
    let mut bytes = Vec::new();
    {
        let mut w =
            datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
                .map_err(|e| internal(&e))?;
        w.write(batch).map_err(|e| internal(&e))?;
        w.finish().map_err(|e| internal(&e))?;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The Flight SQL service.
#[derive(Clone)]
pub struct TesseraFlightSql {
    service: QueryService,
    sql_info: Arc<SqlInfoData>,
    /// Calls per second per key (per address without one), before any lookup: the license's
    /// own rate limit and quotas are the decision's, counted in completed queries.
    limiter: Arc<governor::DefaultKeyedRateLimiter<String>>,
}

/// Calls per second a key may make, and the burst above it.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            per_second: 20,
            burst: 40,
        }
    }
}

impl std::fmt::Debug for TesseraFlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TesseraFlightSql").finish_non_exhaustive()
    }
}

fn sql_info() -> Result<SqlInfoData, Status> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Tessera");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    // The dialect is DataFusion's (PostgreSQL-like): unquoted names fold to lower case.
    b.append(
        SqlInfo::SqlIdentifierCase,
        arrow_flight::sql::SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    let names = |functions: Vec<Arc<datafusion::logical_expr::ScalarUDF>>| -> Vec<String> {
        let mut v: Vec<String> = functions.iter().map(|f| f.name().to_string()).collect();
        v.sort();
        v.dedup();
        v
    };
    b.append(
        SqlInfo::SqlNumericFunctions,
        names(datafusion::functions::math::functions()),
    );
    let mut strings = datafusion::functions::string::functions();
    strings.extend(datafusion::functions::unicode::functions());
    b.append(SqlInfo::SqlStringFunctions, names(strings));
    b.append(
        SqlInfo::SqlDatetimeFunctions,
        names(datafusion::functions::datetime::functions()),
    );
    b.build()
        .map_err(|e| Status::internal(format!("sql info: {e}")))
}

impl TesseraFlightSql {
    pub fn new(service: QueryService, throttle: Throttle) -> Result<TesseraFlightSql, Status> {
        let per_second = std::num::NonZeroU32::new(throttle.per_second.max(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(throttle.burst.max(throttle.per_second).max(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        Ok(TesseraFlightSql {
            service,
            sql_info: Arc::new(sql_info()?),
            limiter: Arc::new(governor::RateLimiter::keyed(
                governor::Quota::per_second(per_second).allow_burst(burst),
            )),
        })
    }

    /// The gRPC service to mount.
    pub fn into_server(self) -> FlightServiceServer<TesseraFlightSql> {
        FlightServiceServer::new(self)
    }

    async fn caller(
        &self,
        metadata: &MetadataMap,
        remote: Option<SocketAddr>,
    ) -> Result<(Option<Credential>, Option<String>), Status> {
        let key = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim().to_string());
        // Throttle before anything is looked up: per key id (the part of a key before its
        // secret), else per address.
        let bucket = match &key {
            Some(k) => format!(
                "key:{}",
                k.rsplit_once('_').map_or(k.as_str(), |(id, _)| id)
            ),
            None => format!(
                "addr:{}",
                remote.map(|a| a.ip().to_string()).unwrap_or_default()
            ),
        };
        if let Err(not_until) = self.limiter.check_key(&bucket) {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Status::resource_exhausted(format!(
                "rate_limited: too many requests from this key: retry in {} ms",
                wait.as_millis().max(1)
            )));
        }
        let license = metadata
            .get(LICENSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let credential = self
            .service
            .gate()
            .credential(key.as_deref())
            .await
            .map_err(|e| internal(&e))?;
        Ok((credential, license))
    }
}

impl TesseraFlightSql {
    /// For calls that answer no data (schemas of metadata results, server facts): a live key
    /// is still required, and the call counts against its throttle.
    async fn require_key(
        &self,
        metadata: &MetadataMap,
        remote: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let (credential, _) = self.caller(metadata, remote).await?;
        if credential.is_some_and(|c| c.is_live(chrono::Utc::now())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "no_credential: {}",
                Reason::NoCredential.message()
            )))
        }
    }

    /// The caller's licensed catalog, after an audited browse decision.
    async fn browse(
        &self,
        metadata: &MetadataMap,
        remote: Option<SocketAddr>,
    ) -> Result<crate::Session, Status> {
        let (credential, license) = self.caller(metadata, remote).await?;
        self.service
            .browse(credential.as_ref(), license.as_deref())
            .await
            .map_err(status)
    }

    /// Runs the SQL a ticket or prepared-statement handle holds, for whoever presents it:
    /// decided again here, whatever was decided when the handle was made.
    async fn run_handle(
        &self,
        bytes: &[u8],
        metadata: &MetadataMap,
        remote: Option<SocketAddr>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = Handle::parse(bytes)?;
        let values = handle.values()?;
        let (credential, header) = self.caller(metadata, remote).await?;
        let license = header.or(handle.license);
        let out = self
            .service
            .query_with(credential.as_ref(), license.as_deref(), &handle.sql, values)
            .await
            .map_err(status)?;
        // What the output rules did, in the result's schema metadata (pyarrow:
        // `table.schema.metadata`).
        let mut meta = out.schema.metadata().clone();
        meta.insert(GROUPS_SUPPRESSED.into(), out.groups_suppressed.to_string());
        meta.insert(ROWS_TRUNCATED.into(), out.rows_truncated.to_string());
        let schema = Arc::new(out.schema.as_ref().clone().with_metadata(meta));
        let batches = out
            .batches
            .into_iter()
            .map(|b| b.with_schema(schema.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(&e))?;
        Ok(Response::new(batches_stream(schema, batches)))
    }
}

fn internal(e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "flight request failed");
    Status::internal(
        "the server failed; retry, and if it persists tell the operators (the server log has the detail)",
    )
}

/// A refusal or failure as a gRPC status with a readable message.
pub fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::Denied { reason, .. } => {
            let message = format!("{}: {}", reason.code(), reason.message());
            match reason {
                Reason::NoCredential | Reason::CredentialExpired | Reason::CredentialRevoked => {
                    Status::unauthenticated(message)
                }
                Reason::RateLimited | Reason::QuotaExceeded => Status::resource_exhausted(message),
                _ => Status::permission_denied(message),
            }
        }
        ServiceError::LicenseRequired(_) => {
            Status::invalid_argument(format!("{e}: send its id in the `{LICENSE_HEADER}` header"))
        }
        ServiceError::Query(QueryError::Refused { rule, message }) => {
            Status::permission_denied(format!("refused ({rule}): {message}"))
        }
        ServiceError::Query(QueryError::Invalid(m)) => Status::invalid_argument(m),
        ServiceError::Query(QueryError::Limit(m)) => Status::resource_exhausted(m),
        ServiceError::Query(QueryError::Internal(m)) => internal(&m),
        ServiceError::Store(m) => internal(&m),
    }
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// A metadata answer: one batch, from a builder.
fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| internal(&e))?;
    Ok(Response::new(batches_stream(batch.schema(), vec![batch])))
}

/// The schema of GetTableTypes' answer.
fn table_types_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
        "table_type",
        datafusion::arrow::datatypes::DataType::Utf8,
        false,
    )]))
}

fn batches_stream(schema: Arc<Schema>, batches: Vec<RecordBatch>) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Box::pin(stream)
}

fn info_for(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket {
        ticket: command.as_any().encode_to_vec().into(),
    };
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

#[tonic::async_trait]
impl FlightSqlService for TesseraFlightSql {
    type FlightService = TesseraFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string();
        let bucket = format!(
            "handshake:{}",
            request
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        );
        if self.limiter.check_key(&bucket).is_err() {
            return Err(Status::resource_exhausted(
                "rate_limited: too many handshakes from this address: retry in a second",
            ));
        }
        // Read what the client sends (pyarrow sends one empty request and closes its side) so
        // the answer does not end the call while the client is still writing.
        let mut incoming = request.into_inner();
        while incoming.message().await?.is_some() {}
        let key = if let Some(b) = header.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| Status::invalid_argument("basic auth is not base64"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| Status::invalid_argument("basic auth is not UTF-8"))?;
            text.split_once(':')
                .map(|(_, k)| k.to_string())
                .unwrap_or(text)
        } else if let Some(k) = header.strip_prefix("Bearer ") {
            k.trim().to_string()
        } else {
            return Err(Status::unauthenticated(
                "send your API key: basic auth with the key as the password, or `authorization: Bearer <key>`",
            ));
        };
        let credential = self
            .service
            .gate()
            .credential(Some(&key))
            .await
            .map_err(|e| internal(&e))?;
        if !credential.is_some_and(|c| c.is_live(chrono::Utc::now())) {
            return Err(Status::unauthenticated(
                "no_credential: the key is unknown, expired or revoked",
            ));
        }
        let bearer = format!("Bearer {key}");
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: key.clone().into_bytes().into(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::iter(vec![Ok(answer)])));
        if let Ok(v) = bearer.parse() {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (credential, license) = self
            .caller(request.metadata(), request.remote_addr())
            .await?;
        let described = self
            .service
            .describe(credential.as_ref(), license.as_deref(), &query.query)
            .await
            .map_err(status)?;
        let handle = serde_json::to_vec(&Handle {
            sql: query.query,
            license,
            params: None,
        })
        .map_err(|e| internal(&e))?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        info_for(ticket, &described.schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.run_handle(
            &ticket.statement_handle,
            request.metadata(),
            request.remote_addr(),
        )
        .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (credential, license) = self
            .caller(request.metadata(), request.remote_addr())
            .await?;
        let described = self
            .service
            .describe(credential.as_ref(), license.as_deref(), &query.query)
            .await
            .map_err(status)?;
        let ipc = |schema: &Schema| -> Result<_, Status> {
            let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: datafusion::arrow::error::ArrowError| internal(&e))?;
            Ok(bytes)
        };
        let handle = serde_json::to_vec(&Handle {
            sql: query.query,
            license,
            params: None,
        })
        .map_err(|e| internal(&e))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: ipc(&described.schema)?,
            parameter_schema: if described.parameters.fields().is_empty() {
                Default::default()
            } else {
                ipc(&described.parameters)?
            },
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles hold no server state: closing is a no-op.
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = Handle::parse(&query.prepared_statement_handle)?;
        let (credential, header) = self
            .caller(request.metadata(), request.remote_addr())
            .await?;
        let license = header.or(handle.license);
        let described = self
            .service
            .describe(credential.as_ref(), license.as_deref(), &handle.sql)
            .await
            .map_err(status)?;
        info_for(query, &described.schema, request.into_inner())
    }

    /// Binds parameters: the client sends one row of values; the answer is a new handle holding
    /// them (handles are the only state), which the client executes.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::parse(&query.prepared_statement_handle)?;
        let (credential, _) = self
            .caller(request.metadata(), request.remote_addr())
            .await?;
        if credential.is_none() {
            return Err(Status::unauthenticated(format!(
                "no_credential: {}",
                Reason::NoCredential.message()
            )));
        }
        let stream = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(stream)
            .try_collect()
            .await
            .map_err(|e| {
                Status::invalid_argument(format!("the parameter batch is not valid Arrow: {e}"))
            })?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let batch = match (batches.into_iter().find(|b| b.num_rows() > 0), rows) {
            (None, _) => {
                handle.params = None;
                None
            }
            (Some(b), 1) => Some(b),
            (Some(_), n) => {
                return Err(Status::invalid_argument(format!(
                    "bind one row of parameters per execution of a query, not {n}"
                )));
            }
        };
        if let Some(b) = batch {
            handle.params = Some(encode_params(&b)?);
        }
        let bytes = serde_json::to_vec(&handle).map_err(|e| internal(&e))?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bytes.into()),
        })
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.run_handle(
            &query.prepared_statement_handle,
            request.metadata(),
            request.remote_addr(),
        )
        .await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.require_key(request.metadata(), request.remote_addr())
            .await?;
        let schema = query.into_builder().schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.browse(request.metadata(), request.remote_addr())
            .await?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.require_key(request.metadata(), request.remote_addr())
            .await?;
        let schema = query.clone().into_builder().schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self
            .browse(request.metadata(), request.remote_addr())
            .await?;
        let mut b = query.into_builder();
        if let Some(catalog) = session.context().catalog(CATALOG) {
            for s in catalog.schema_names() {
                b.append(CATALOG, s);
            }
        }
        one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.require_key(request.metadata(), request.remote_addr())
            .await?;
        let schema = query.clone().into_builder().schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self
            .browse(request.metadata(), request.remote_addr())
            .await?;
        let mut b = query.into_builder();
        if let Some(catalog) = session.context().catalog(CATALOG) {
            for s in catalog.schema_names() {
                let Some(schema) = catalog.schema(&s) else {
                    continue;
                };
                for t in schema.table_names() {
                    let table = schema.table(&t).await.map_err(|e| internal(&e))?;
                    if let Some(table) = table {
                        b.append(CATALOG, &s, &t, "TABLE", table.schema().as_ref())
                            .map_err(|e| internal(&e))?;
                    }
                }
            }
        }
        one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.require_key(request.metadata(), request.remote_addr())
            .await?;
        info_for(query, &table_types_schema(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.browse(request.metadata(), request.remote_addr())
            .await?;
        one_batch(RecordBatch::try_new(
            table_types_schema(),
            vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "TABLE",
            ]))],
        ))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.require_key(request.metadata(), request.remote_addr())
            .await?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // Server facts, no data: a key is still required.
        self.require_key(request.metadata(), request.remote_addr())
            .await?;
        let b = query.into_builder(&self.sql_info);
        one_batch(b.build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A certificate chain and its private key, PEM files, for serving Flight SQL over TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// The server's TLS configuration; errors name the file and what to do.
    pub fn load(&self) -> Result<tonic::transport::ServerTlsConfig, String> {
        let read = |path: &std::path::Path, what: &str| {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
                return Err(format!(
                    "the TLS {what} {} is not PEM (expected a -----BEGIN … block)",
                    path.display()
                ));
            }
            Ok(bytes)
        };
        let cert = read(&self.cert, "certificate")?;
        let key = read(&self.key, "private key")?;
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key)))
    }
}

/// Serves Flight SQL on `listener` until `shutdown` resolves, over TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: QueryService,
    throttle: Throttle,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let flight = TesseraFlightSql::new(service, throttle)?;
    // Forget idle keys now and then, so the limiter's memory stays bounded.
    let limiter = flight.limiter.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let served = builder
        .add_service(flight.into_server())
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, small answers wait on delayed ACKs: tens of milliseconds
            // per round trip, and a query takes two (GetFlightInfo, DoGet).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    sweeper.abort();
    served?;
    Ok(())
}

/// The address ADBC takes for a Flight SQL server on `addr`: `grpc://host:port`, or
/// `grpc+tls://host:port` over TLS.
pub fn uri(addr: SocketAddr, tls: bool) -> String {
    if tls {
        format!("grpc+tls://{addr}")
    } else {
        format!("grpc://{addr}")
    }
}
