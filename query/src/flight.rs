//! Arrow Flight SQL over [`QueryService`]. Every call authenticates with
//! `authorization: Bearer <api key>` (Handshake with basic auth, the key as the password,
//! answers that bearer token); the license is the key's only license or the one named in the
//! `x-tessera-license` header.
//!
//! Tickets carry only the SQL and the license named: `DoGet` authenticates and decides again,
//! so a forged or replayed ticket is just SQL from whoever presents it, enforced like any other.
//!
//! Landed: Handshake, CommandStatementQuery (GetFlightInfo + DoGet), GetCatalogs,
//! GetDbSchemas, GetTables (with and without filters and table schemas), GetTableTypes,
//! GetSqlInfo, prepared statements without parameters (create, execute, close; a handle holds
//! only the SQL and the license, like a ticket). Still to come: parameter binding, TLS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, SqlSupportedTransaction, TicketStatementQuery,
};
use arrow_flight::{Action, IpcMessage, SchemaAsIpc};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use base64::Engine;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::record_batch::RecordBatch;
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

/// What a statement ticket holds.
#[derive(Debug, Serialize, Deserialize)]
struct Handle {
    sql: String,
    license: Option<String>,
}

/// The Flight SQL service.
#[derive(Clone)]
pub struct TesseraFlightSql {
    service: QueryService,
    sql_info: Arc<SqlInfoData>,
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
    b.build()
        .map_err(|e| Status::internal(format!("sql info: {e}")))
}

impl TesseraFlightSql {
    pub fn new(service: QueryService) -> Result<TesseraFlightSql, Status> {
        Ok(TesseraFlightSql {
            service,
            sql_info: Arc::new(sql_info()?),
        })
    }

    /// The gRPC service to mount.
    pub fn into_server(self) -> FlightServiceServer<TesseraFlightSql> {
        FlightServiceServer::new(self)
    }

    async fn caller(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(Option<Credential>, Option<String>), Status> {
        let key = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim().to_string());
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
    /// The caller's licensed catalog, after an audited browse decision.
    async fn browse(&self, metadata: &MetadataMap) -> Result<crate::Session, Status> {
        let (credential, license) = self.caller(metadata).await?;
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
    ) -> Result<Response<DoGetStream>, Status> {
        let handle: Handle = serde_json::from_slice(bytes)
            .map_err(|_| Status::invalid_argument("not a statement handle of this server"))?;
        let (credential, header) = self.caller(metadata).await?;
        let license = header.or(handle.license);
        let out = self
            .service
            .query(credential.as_ref(), license.as_deref(), &handle.sql)
            .await
            .map_err(status)?;
        Ok(Response::new(batches_stream(out.schema, out.batches)))
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
        let now = chrono::Utc::now();
        let live = credential.as_ref().is_some_and(|c| {
            c.revoked_at.is_none_or(|t| t > now) && c.expires_at.is_none_or(|t| t > now)
        });
        if !live {
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
        let (credential, license) = self.caller(request.metadata()).await?;
        let schema = self
            .service
            .describe(credential.as_ref(), license.as_deref(), &query.query)
            .await
            .map_err(status)?;
        let handle = serde_json::to_vec(&Handle {
            sql: query.query,
            license,
        })
        .map_err(|e| internal(&e))?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        info_for(ticket, &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.run_handle(&ticket.statement_handle, request.metadata())
            .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (credential, license) = self.caller(request.metadata()).await?;
        let schema = self
            .service
            .describe(credential.as_ref(), license.as_deref(), &query.query)
            .await
            .map_err(status)?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: datafusion::arrow::error::ArrowError| internal(&e))?;
        let handle = serde_json::to_vec(&Handle {
            sql: query.query,
            license,
        })
        .map_err(|e| internal(&e))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema,
            parameter_schema: Default::default(),
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
        let handle: Handle = serde_json::from_slice(&query.prepared_statement_handle)
            .map_err(|_| Status::invalid_argument("not a prepared statement of this server"))?;
        let (credential, header) = self.caller(request.metadata()).await?;
        let license = header.or(handle.license);
        let schema = self
            .service
            .describe(credential.as_ref(), license.as_deref(), &handle.sql)
            .await
            .map_err(status)?;
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.run_handle(&query.prepared_statement_handle, request.metadata())
            .await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.browse(request.metadata()).await?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        let schema = b.schema();
        let batch = b.build().map_err(|e| internal(&e))?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self.browse(request.metadata()).await?;
        let mut b = query.into_builder();
        if let Some(catalog) = session.context().catalog(CATALOG) {
            for s in catalog.schema_names() {
                b.append(CATALOG, s);
            }
        }
        let schema = b.schema();
        let batch = b.build().map_err(|e| internal(&e))?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let session = self.browse(request.metadata()).await?;
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
        let schema = b.schema();
        let batch = b.build().map_err(|e| internal(&e))?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "table_type",
            datafusion::arrow::datatypes::DataType::Utf8,
            false,
        )]);
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.browse(request.metadata()).await?;
        let schema = Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "table_type",
            datafusion::arrow::datatypes::DataType::Utf8,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "TABLE",
            ]))],
        )
        .map_err(|e| internal(&e))?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        info_for(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // Server facts, no data: a key is still required.
        let (credential, _) = self.caller(request.metadata()).await?;
        if credential.is_none() {
            return Err(Status::unauthenticated(format!(
                "no_credential: {}",
                Reason::NoCredential.message()
            )));
        }
        let b = query.into_builder(&self.sql_info);
        let schema = b.schema();
        let batch = b.build().map_err(|e| internal(&e))?;
        Ok(Response::new(batches_stream(schema, vec![batch])))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves Flight SQL on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: QueryService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let flight = TesseraFlightSql::new(service)?;
    tonic::transport::Server::builder()
        .add_service(flight.into_server())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

/// The address ADBC takes for a Flight SQL server on `addr` (`grpc://host:port`).
pub fn uri(addr: SocketAddr) -> String {
    format!("grpc://{addr}")
}
