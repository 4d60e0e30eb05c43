//! Authentication and server identity: wrong token, unknown identity, expired certificate.

mod common;
use common::*;
use referee_transport::messages::*;
use referee_transport::tls::parse_fingerprint;
use referee_transport::{
    auth_policy, client_endpoint, connect, read_msg, server_endpoint, write_msg, EndpointLimits,
    ServerIdentity, TokenSet, TransportError, Trust,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A CA and a leaf for `localhost`/127.0.0.1 signed by it; `expired` backdates the leaf.
fn ca_and_leaf(ca_name: &str, expired: bool) -> (String, ServerIdentity) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    if expired {
        leaf_params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let id = ServerIdentity::from_der(
        vec![leaf.der().clone(), ca_cert.der().clone()],
        PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    );
    (ca_cert.pem(), id)
}

/// Serves one connection (handshake only) and returns the client's connect result.
async fn try_connect(
    id: &ServerIdentity,
    trust: Trust,
) -> Result<quinn::Connection, TransportError> {
    let server = server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        id,
        &EndpointLimits::default(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        if let Some(inc) = server.accept().await {
            let _ = referee_transport::accept(inc, Duration::from_secs(5)).await;
        }
        server
    });
    let client = client_endpoint(&trust).unwrap();
    let r = tokio::time::timeout(TEST_TIMEOUT, connect(&client, addr, "localhost"))
        .await
        .expect("connect must not hang");
    let _server = srv.await.unwrap();
    r
}

#[tokio::test]
async fn ca_file_trust_accepts_its_ca_and_refuses_another_ca_and_expired_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, id) = ca_and_leaf("Referee Test CA", false);
    let (other_ca_pem, _) = ca_and_leaf("Some Other CA", false);
    let (expired_ca_pem, expired_id) = ca_and_leaf("Expiry Test CA", true);
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ca = write("ca.pem", &ca_pem);
    let other = write("other.pem", &other_ca_pem);
    let expired_ca = write("expired-ca.pem", &expired_ca_pem);

    // Positive control: the right CA works, so the refusals below are about trust.
    try_connect(&id, Trust::CaFile(ca.clone()))
        .await
        .expect("the issuing CA must be accepted");

    let e = try_connect(&id, Trust::CaFile(other)).await.unwrap_err();
    println!("other CA: {e}");
    assert!(matches!(e, TransportError::Tls(_)), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("unknown"), "{e}");

    let e = try_connect(&expired_id, Trust::CaFile(expired_ca))
        .await
        .unwrap_err();
    println!("expired: {e}");
    assert!(matches!(e, TransportError::Tls(_)), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("expired"), "{e}");

    let e = client_endpoint(&Trust::CaFile(dir.path().join("missing.pem"))).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}

#[tokio::test]
async fn pinned_fingerprint_accepts_its_server_and_refuses_another() {
    let id = identity();
    let other = identity();
    // Colons and upper case are accepted.
    let fp = id.fingerprint_hex().to_uppercase();
    let with_colons: String = fp
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    try_connect(&id, Trust::Fingerprint(with_colons))
        .await
        .expect("pinned identity accepted");
    let e = try_connect(&id, Trust::Fingerprint(other.fingerprint_hex()))
        .await
        .unwrap_err();
    println!("wrong pin: {e}");
    assert!(matches!(e, TransportError::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("fingerprint"), "{e}");
    assert!(client_endpoint(&Trust::Fingerprint("abc".into())).is_err());
}

#[tokio::test]
async fn insecure_loopback_works_on_loopback_only() {
    let id = identity();
    try_connect(&id, Trust::InsecureLoopback)
        .await
        .expect("loopback allowed");
    let target: SocketAddr = "192.0.2.1:4433".parse().unwrap();
    let e = referee_transport::client_endpoint_for(&Trust::InsecureLoopback, target).unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    let ep = client_endpoint(&Trust::InsecureLoopback).unwrap();
    let e = connect(&ep, target, "example").await.unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
}

/// A tiny server loop: authenticate the Hello, answer Welcome or Error, then close.
async fn hello_server(server: quinn::Endpoint, policy: referee_transport::AuthPolicy) {
    while let Some(inc) = server.accept().await {
        let Ok(conn) = referee_transport::accept(inc, Duration::from_secs(5)).await else {
            continue;
        };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            continue;
        };
        let reply = match read_msg::<ClientMsg>(&mut recv, 1 << 16).await {
            Ok(Some(ClientMsg::Hello { role, token, .. })) => {
                match policy.authorize(role, &token) {
                    Ok(()) => ServerMsg::Welcome {
                        server: "test".into(),
                        protocol: PROTOCOL_VERSION,
                    },
                    Err(e) => ServerMsg::Error(ErrorMsg {
                        code: ErrorCode::Unauthorized,
                        message: e.to_string(),
                        recoverable: false,
                        session_id: None,
                    }),
                }
            }
            _ => continue,
        };
        let _ = write_msg(&mut send, &reply).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn hello(client: &quinn::Endpoint, addr: SocketAddr, role: Role, token: &str) -> ServerMsg {
    let conn = connect(client, addr, "localhost").await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_msg(
        &mut send,
        &ClientMsg::Hello {
            role,
            token: token.into(),
            client: "t".into(),
        },
    )
    .await
    .unwrap();
    let m = read_msg::<ServerMsg>(&mut recv, 1 << 16)
        .await
        .unwrap()
        .unwrap();
    conn.close(0u32.into(), b"");
    m
}

#[tokio::test]
async fn wrong_token_is_refused_and_right_token_welcomed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (server, addr, client) = pair();
        let tokens = TokenSet::new(&["capture-secret"], &["feed-secret"]);
        let policy = auth_policy("127.0.0.1".parse().unwrap(), &tokens).unwrap();
        let srv = tokio::spawn(hello_server(server.clone(), policy));
        assert!(matches!(
            hello(&client, addr, Role::Capture, "capture-secret").await,
            ServerMsg::Welcome { .. }
        ));
        assert!(matches!(
            hello(&client, addr, Role::Feed, "feed-secret").await,
            ServerMsg::Welcome { .. }
        ));
        for (role, tok) in [
            (Role::Capture, "wrong"),
            (Role::Capture, ""),
            (Role::Capture, "feed-secret"),
            (Role::Feed, "capture-secret"),
        ] {
            match hello(&client, addr, role, tok).await {
                ServerMsg::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Unauthorized);
                    assert!(e.message.contains("token"), "{}", e.message);
                }
                other => panic!("{role:?}/{tok:?} must be refused, got {other:?}"),
            }
        }
        server.close(0u32.into(), b"");
        srv.abort();
    })
    .await
    .expect("test timed out");
}

#[test]
fn token_set_and_policy_rules() {
    let t = TokenSet::new(&["a1", "b2"], &[] as &[&str]);
    assert!(t.check(Role::Capture, "a1") && t.check(Role::Capture, "b2"));
    assert!(
        !t.check(Role::Capture, "a")
            && !t.check(Role::Capture, "a1 ")
            && !t.check(Role::Feed, "a1")
    );
    let open = TokenSet::default();
    let e = auth_policy("0.0.0.0".parse().unwrap(), &open).unwrap_err();
    assert!(e.to_string().contains("without tokens"), "{e}");
    let p = auth_policy("::1".parse().unwrap(), &open).unwrap();
    assert!(p.authorize(Role::Capture, "").is_ok() && p.is_open(Role::Feed));
    let p = auth_policy("10.0.0.5".parse().unwrap(), &t).unwrap();
    assert!(p.authorize(Role::Capture, "a1").is_ok());
    assert!(matches!(
        p.authorize(Role::Capture, "zz"),
        Err(TransportError::Unauthorized(_))
    ));
    assert!(matches!(
        p.authorize(Role::Feed, ""),
        Err(TransportError::Unauthorized(_))
    ));
}

#[test]
fn identity_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = ServerIdentity::load_or_generate(&data).unwrap();
    let b = ServerIdentity::load_or_generate(&data).unwrap();
    assert_eq!(a.fingerprint_hex(), b.fingerprint_hex());
    assert_eq!(a.fingerprint_hex().len(), 64);
    let written = std::fs::read_to_string(data.join("identity.sha256")).unwrap();
    assert_eq!(written.trim(), a.fingerprint_hex());
    // The fingerprint is the SHA-256 of the leaf DER.
    let der: CertificateDer = a.chain[0].clone();
    assert_eq!(
        referee_transport::tls::fingerprint(&der),
        a.fingerprint_hex()
    );
    // --server-fingerprint may name the file.
    let trust =
        Trust::fingerprint_from_arg(data.join("identity.sha256").to_str().unwrap()).unwrap();
    assert_eq!(trust, Trust::Fingerprint(a.fingerprint_hex()));
    assert!(Trust::fingerprint_from_arg("/nonexistent/identity.sha256").is_err());
    assert_eq!(parse_fingerprint(&a.fingerprint_hex()).unwrap().len(), 32);
    let c = ServerIdentity::from_files(&data.join("cert.pem"), &data.join("key.pem")).unwrap();
    assert_eq!(c.fingerprint_hex(), a.fingerprint_hex());
    assert!(
        ServerIdentity::from_files(Path::new("/nonexistent.pem"), &data.join("key.pem")).is_err()
    );
}
