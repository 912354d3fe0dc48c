//! Startup: role and database checks, the per-connection [`Session`], ParameterStatus and
//! BackendKeyData; and CancelRequest.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::ServerParameterProvider;
use pgwire::api::auth::{
    StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{
    ClientInfo, METADATA_DATABASE, METADATA_USER, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::CancelRegistry;
use crate::engine::{Engine, SUPERUSER};
use crate::session::Session;

/// The duplicate socket a session watches for disconnects (taken at startup).
pub struct Watch(pub Mutex<Option<tokio::net::TcpStream>>);

/// Handles StartupMessage.
pub struct Startup {
    engine: Arc<Engine>,
    registry: Arc<CancelRegistry>,
    keys: RandomPidSecretKeyGenerator,
}

impl Startup {
    pub fn new(engine: Arc<Engine>, registry: Arc<CancelRegistry>) -> Self {
        Startup {
            engine,
            registry,
            keys: RandomPidSecretKeyGenerator::default(),
        }
    }
}

fn fatal(code: &str, msg: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), msg)))
}

struct Params(Vec<(String, String)>);

impl ServerParameterProvider for Params {
    fn server_parameters<C>(&self, _client: &C) -> Option<std::collections::HashMap<String, String>>
    where
        C: ClientInfo,
    {
        Some(self.0.iter().cloned().collect())
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let PgWireFrontendMessage::Startup(ref startup) = message else {
            return Ok(());
        };
        protocol_negotiation(client, startup).await?;
        save_startup_parameters_to_metadata(client, startup);
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let database = client
            .metadata()
            .get(METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        // Until password authentication lands, only the superuser role exists and only
        // loopback clients are trusted.
        if user != SUPERUSER {
            return Err(fatal("28000", format!("role \"{user}\" does not exist")));
        }
        if !client.socket_addr().ip().is_loopback() {
            return Err(fatal(
                "28000",
                format!(
                    "no pg_hba.conf entry for host \"{}\": only local connections are trusted",
                    client.socket_addr().ip()
                ),
            ));
        }
        if database != touchlake_catalog::DATABASE {
            return Err(fatal(
                "3D000",
                format!("database \"{database}\" does not exist"),
            ));
        }
        let options: BTreeMap<String, String> = client
            .metadata()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "options" | "replication"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let session = Session::new(self.engine.clone(), &user, &options)
            .map_err(|e| fatal("XX000", format!("cannot start session: {e}")))?;
        let session = Arc::new(session);
        if let Some(w) = client.session_extensions().get::<Watch>()
            && let Some(sock) = w.0.lock().ok().and_then(|mut g| g.take())
        {
            session.watch_socket(sock);
        }
        let (pid, key) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, key.clone());
        self.registry
            .register(pid, key.to_bytes().to_vec(), &session);
        let params = Params(session.startup_parameters());
        client.session_extensions().insert::<Arc<Session>>(session);
        finish_authentication(client, &params).await?;
        let _ = client.flush().await;
        Ok(())
    }
}

/// Handles CancelRequest (on its own connection).
pub struct Cancel {
    pub registry: Arc<CancelRegistry>,
}

#[async_trait]
impl CancelHandler for Cancel {
    async fn on_cancel_request(&self, req: CancelRequest) {
        self.registry.cancel(req.pid, &req.secret_key.to_bytes());
    }
}
