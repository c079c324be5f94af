//! What workload identity and DPoP cost, beside what they replace, in one run:
//!
//! * issuance from a workload JWT seen for the first time (verify the JWT against the issuer's
//!   cached key, mint the workload's authority block, verify it, then the same issuance) beside
//!   issuance from an agent token already verified;
//! * a DPoP proof check (what the HTTP door adds to a call with a bound token) beside the whole
//!   in-process call it guards.
//!
//! The JWTs and proofs are signed with a fresh P-256 key outside the timed part; each timed
//! iteration gets its own (a proof serves one request, and a JWT seen before is a cache hit).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use capgate_authz::Channel;
use capgate_core::task::{Intent, Ttl};
use capgate_server::identity::dpop::{Proofs, Request};
use capgate_server::{Config, HostBuilder};
use criterion::{BatchSize, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use support::{Installation, args, doc_read_tool};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    capgate_server::install_crypto_provider();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                     "kid": "k1", "alg": "ES256", "use": "sig"});
    let signing = EncodingKey::from_ec_der(pkcs8.as_ref());

    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::create(dir.path(), "", None);
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk.clone()]}).to_string()).unwrap();
    let text = format!(
        "{}\n[[identity.jwt]]\nissuer = \"https://issuer.bench\"\njwks = {:?}\naudience = \"capgate\"\ntenant = \"{{tenant}}\"\ntools = [\"doc_read\"]\n",
        std::fs::read_to_string(&inst.config_path).unwrap(),
        jwks.display().to_string()
    );
    let config = Config::parse(&text, &inst.config_path).unwrap();
    let host = HostBuilder::new(config)
        .tool(doc_read_tool())
        .unwrap()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let intent = Intent {
        purpose: "benchmark".into(),
        tools: vec!["doc_read".into()],
        resources: [("doc_read".to_owned(), vec!["/docs/".to_owned()])].into(),
        ttl: Some(Ttl::Text("10m".into())),
        ..Intent::default()
    };
    let agent = host
        .verifier()
        .verify(&inst.agent_token(&["doc_read".into()], &[]))
        .unwrap();
    let mut serial = 0u64;
    let mut jwt = || {
        serial += 1;
        let claims = json!({"iss": "https://issuer.bench", "aud": "capgate", "sub": format!("w{serial}"),
                            "tenant": "acme", "exp": now() + 600});
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &signing).unwrap()
    };
    // The issuer's keys are read once, before the timing.
    rt.block_on(host.workloads().agent_token(&jwt())).unwrap();

    let mut g = c.benchmark_group("identity");
    g.bench_function("issue from an agent token (verified)", |b| {
        b.iter(|| {
            host.issuer()
                .issue(&agent, intent.clone(), Channel::Http)
                .is_ok()
        })
    });
    g.bench_function("issue from a workload JWT (first sight)", |b| {
        b.iter_batched(
            &mut jwt,
            |t| {
                let (token, _) = rt.block_on(host.workloads().agent_token(&t)).unwrap();
                host.issuer()
                    .issue(&token, intent.clone(), Channel::Http)
                    .is_ok()
            },
            BatchSize::SmallInput,
        )
    });

    let task = host
        .issuer()
        .issue(&agent, intent.clone(), Channel::Http)
        .unwrap()
        .token;
    let call_args = args(json!({"path": "a/readme.txt"}));
    rt.block_on(host.call(&task, "doc_read", call_args.clone()))
        .unwrap();
    g.bench_function("bearer call (Host::call, warm)", |b| {
        b.iter(|| {
            rt.block_on(host.call(&task, "doc_read", call_args.clone()))
                .is_ok()
        })
    });
    let proofs = Proofs::default();
    let mut jti = 0u64;
    let mut proof = || {
        jti += 1;
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(serde_json::from_value(jwk.clone()).unwrap());
        let ath = b64(ring::digest::digest(&ring::digest::SHA256, task.as_bytes()).as_ref());
        let claims = json!({"jti": format!("j{jti}"), "htm": "POST", "htu": "http://127.0.0.1:8080/mcp",
                            "iat": now(), "ath": ath});
        jsonwebtoken::encode(&h, &claims, &signing).unwrap()
    };
    g.bench_function("DPoP proof check (added to a bound call)", |b| {
        b.iter_batched(
            &mut proof,
            |p| {
                proofs
                    .verify(
                        &p,
                        Request {
                            method: "POST",
                            host: "127.0.0.1:8080",
                            path: "/mcp",
                            token: Some(&task),
                        },
                    )
                    .is_ok()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    c.final_summary();
}
