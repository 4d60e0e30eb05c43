//! The start of every connection: `Hello` -> `Welcome`, then `SessionStart` -> `SessionStarted`
//! (a resume after the first time), within the handshake timeout.

use super::error::{server_error, Failure};
use super::state::State;
use super::{AgentConfig, AgentError};
use crate::source::SourceInfo;
use referee_transport::messages::{ClientMsg, Role, ServerMsg, SessionStart};
use referee_transport::quinn;
use referee_transport::{read_msg, write_msg};

/// Says who the agent is and (re)starts the session; returns true when it resumed one.
pub(super) async fn start_session(
    ctrl: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    cfg: &AgentConfig,
    info: &SourceInfo,
    st: &mut State,
) -> Result<bool, Failure> {
    let hello = ClientMsg::Hello {
        role: Role::Capture,
        token: cfg.token.clone(),
        client: cfg.client_name.clone(),
    };
    write_msg(ctrl, &hello).await?;
    match expect_reply(recv, st, cfg, "Welcome").await? {
        ServerMsg::Welcome { server, protocol } => {
            tracing::info!(%server, protocol, "connected to the daemon");
        }
        other => return Err(unexpected("Welcome", &other)),
    }
    let resume = st.sessions_started > 0;
    let start = ClientMsg::SessionStart(SessionStart {
        session_id: cfg.session_id.clone(),
        fps: cfg.fps.unwrap_or(info.fps),
        width: info.width,
        height: info.height,
        piste: cfg.piste.clone(),
        camera: cfg.camera.clone(),
        undistort: cfg.undistort,
        resume,
        resume_secret: if resume {
            st.resume_secret.clone()
        } else {
            None
        },
    });
    write_msg(ctrl, &start).await?;
    match expect_reply(recv, st, cfg, "SessionStarted").await? {
        ServerMsg::SessionStarted {
            ack, resume_secret, ..
        } => {
            st.apply_ack(ack);
            st.resume_secret = Some(resume_secret);
        }
        other => return Err(unexpected("SessionStarted", &other)),
    }
    st.sessions_started += 1;
    Ok(resume)
}

fn unexpected(what: &str, got: &ServerMsg) -> Failure {
    Failure::Fatal(AgentError::Protocol(format!(
        "expected {what}, got {got:?}"
    )))
}

/// Reads one message within the handshake timeout, skipping Progress/Live/Feed/Pong
/// notifications and taking in Acks.
async fn expect_reply(
    recv: &mut quinn::RecvStream,
    st: &mut State,
    cfg: &AgentConfig,
    what: &'static str,
) -> Result<ServerMsg, Failure> {
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    loop {
        let read = read_msg::<ServerMsg>(recv, cfg.max_message_bytes);
        let msg = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => {
                return Err(Failure::Retry(format!(
                    "no {what} within {:?}",
                    cfg.handshake_timeout
                )))
            }
            Ok(r) => r?,
        };
        match msg {
            None => {
                return Err(Failure::Retry(format!(
                    "the daemon closed the control stream before {what}"
                )))
            }
            Some(ServerMsg::Ack { ack, .. }) => st.apply_ack(ack),
            Some(
                ServerMsg::Progress { .. }
                | ServerMsg::Live(_)
                | ServerMsg::Feed(_)
                | ServerMsg::Pong { .. },
            ) => {}
            Some(ServerMsg::Error(e)) => return Err(server_error(e)),
            Some(other) => return Ok(other),
        }
    }
}
