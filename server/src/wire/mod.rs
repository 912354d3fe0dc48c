//! The PostgreSQL wire protocol front end, on `pgwire`: the accept loop, the per-connection
//! message loop, startup (role and database checks), cancel, and the simple and extended
//! query handlers. Handlers translate messages and call the [`Session`] API; they do not
//! plan queries or touch Delta.

mod handler;
mod shape;
mod sqlstate;
mod startup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use pgwire::api::ClientInfo;
use pgwire::api::PgWireConnectionState;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::Engine;
use crate::session::Session;

/// (process id, secret key) as sent in BackendKeyData.
type BackendKey = (i32, Vec<u8>);

/// Sessions by (pid, secret key), for CancelRequest.
#[derive(Default, Debug)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<BackendKey, Weak<Session>>>,
}

impl CancelRegistry {
    fn register(&self, pid: i32, key: Vec<u8>, s: &Arc<Session>) {
        if let Ok(mut m) = self.sessions.lock() {
            m.retain(|_, w| w.strong_count() > 0);
            m.insert((pid, key), Arc::downgrade(s));
        }
    }

    fn cancel(&self, pid: i32, key: &[u8]) {
        let s = self
            .sessions
            .lock()
            .ok()
            .and_then(|m| m.get(&(pid, key.to_vec())).and_then(Weak::upgrade));
        if let Some(s) = s {
            tracing::info!(pid, "cancel request");
            s.cancel();
        }
    }
}

/// The handlers of one server: shared by all its connections.
pub struct Handlers {
    query: Arc<handler::QueryHandler>,
    startup: Arc<startup::Startup>,
    cancel: Arc<startup::Cancel>,
}

/// Serve the wire protocol on `listener` until the process ends.
pub async fn serve(engine: Arc<Engine>, listener: TcpListener) -> std::io::Result<()> {
    let registry = Arc::new(CancelRegistry::default());
    let handlers = Arc::new(Handlers {
        query: Arc::new(handler::QueryHandler::new()),
        startup: Arc::new(startup::Startup::new(engine.clone(), registry.clone())),
        cancel: Arc::new(startup::Cancel { registry }),
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(socket, handlers).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// One connection: SSL negotiation (refused until TLS lands), then messages until the
/// client terminates. Same as pgwire's `process_socket`, plus a duplicate of the socket
/// that the session watches to notice a client that goes away mid-query.
async fn connection(socket: TcpStream, handlers: Arc<Handlers>) -> std::io::Result<()> {
    let std_socket = socket.into_std()?;
    let watch = std_socket.try_clone().and_then(TcpStream::from_std).ok();
    let socket = TcpStream::from_std(std_socket)?;
    let startup_deadline = tokio::time::sleep(std::time::Duration::from_secs(60));
    tokio::pin!(startup_deadline);
    let negotiated = tokio::select! {
        _ = &mut startup_deadline => return Ok(()),
        s = negotiate_tls::<crate::session::Prepared>(socket, None) => s?,
    };
    let Some(mut socket) = negotiated else {
        return Ok(());
    };
    if let Some(w) = watch {
        socket
            .session_extensions()
            .insert(startup::Watch(Mutex::new(Some(w))));
    }
    let startup_handler = handlers.startup.clone();
    let simple = handlers.query.clone();
    let extended = handlers.query.clone();
    let copy = Arc::new(handler::CopyInHandler);
    let cancel = handlers.cancel.clone();
    loop {
        let msg = if matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        ) {
            tokio::select! {
                _ = &mut startup_deadline => None,
                m = socket.next() => m,
            }
        } else {
            socket.next().await
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // A malformed message: tell the client (if it still listens) and close.
                let info = pgwire::error::ErrorInfo::new(
                    "FATAL".into(),
                    "08P01".into(),
                    format!("invalid message: {e}"),
                );
                let _ = process_error(
                    &mut socket,
                    pgwire::error::PgWireError::UserError(Box::new(info)),
                    false,
                )
                .await;
                break;
            }
            None => break,
        };
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        // Like PostgreSQL, ignore copy messages outside COPY: a client whose COPY failed
        // at Execute still ends it with CopyFail/CopyDone (then Sync).
        if matches!(
            msg,
            PgWireFrontendMessage::CopyData(_)
                | PgWireFrontendMessage::CopyDone(_)
                | PgWireFrontendMessage::CopyFail(_)
        ) && !matches!(socket.state(), PgWireConnectionState::CopyInProgress(_))
        {
            continue;
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(ext) => ext,
            _ => msg.is_extended_query(),
        };
        if let Err(e) = process_message(
            msg,
            &mut socket,
            startup_handler.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await
        {
            process_error(&mut socket, e, is_extended).await?;
        }
    }
    Ok(())
}
