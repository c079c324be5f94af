//! The operator's commands: keys, policy checks, and startup refusals.

use capgate_testkit::*;
use serde_json::json;

#[test]
fn keys_init_refuses_to_overwrite_without_force() {
    let cg = Capgate::new();
    let key = cg.state().join("root.key");
    let before = std::fs::read_to_string(&key).unwrap();
    assert!(cg.stderr_of_failure(&["keys", "init"]).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        before,
        "the key is untouched"
    );
    let agent = cg.mint("a", "acme", &["fs_read"], &[]);
    let public = cg.stdout_of(&["keys", "init", "--force"]);
    assert!(
        public.starts_with("ed25519/") && public.len() == 8 + 64,
        "{public}"
    );
    assert_ne!(std::fs::read_to_string(&key).unwrap(), before);
    let out = cg.run(&["token", "inspect", &agent]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does NOT verify"),
        "tokens of the old key stop verifying"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(cg.stdout_of(&["keys", "show"]), public);
}

#[test]
fn policy_check_reports_parse_errors_with_file_and_line_and_serve_refuses_them() {
    let cg = Capgate::new();
    let checked = cg.stdout_of(&["policy", "check"]);
    assert!(checked.contains("ok: policies/invocation.datalog (shipped)"));

    let bad = cg.base().join("broken.datalog");
    std::fs::write(
        &bad,
        "// a comment\ncheck if tool($t);\ncheck if resource($r, ;\nallow if true;\n",
    )
    .unwrap();
    cg.append_config("[policy]\ninvocation = \"broken.datalog\"\n");
    for args in [
        &["policy", "check"][..],
        &["serve", "--http", "127.0.0.1:0"][..],
    ] {
        let err = cg.stderr_of_failure(args);
        assert!(
            err.contains(&format!("{}:3:", bad.display())),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn predicates_outside_the_vocabulary_are_warned_about() {
    let cg = Capgate::new();
    let odd = cg.base().join("odd.datalog");
    std::fs::write(&odd, "check if tool($t), rigth($t);\nallow if true;\n").unwrap();
    cg.append_config("[policy]\ninvocation = \"odd.datalog\"\n");
    let out = cg.run(&["policy", "check"]);
    assert!(out.status.success(), "a warning is not an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("warning: {}:1:", odd.display())) && err.contains("`rigth`"),
        "{err}"
    );
    let out = cg.run(&["policy", "check", "--strict"]);
    assert_eq!(out.status.code(), Some(2));
    // serve starts, and says so.
    let server = cg.serve_http();
    assert!(server.stderr.lock().unwrap().contains("rigth"));
}

#[test]
fn bad_cli_input_gets_a_clear_error() {
    let cg = Capgate::new();
    for (grant, says) in [
        (
            &["--tool", "no_such_tool"][..],
            "unknown tool `no_such_tool`",
        ),
        (
            &["--tool", "fs_read", "--resource", "fs_read"][..],
            "expected TOOL=PREFIX",
        ),
        (
            &["--tool", "fs_read", "--resource", "fs_read=../../etc"][..],
            "outside the tool root",
        ),
    ] {
        let mut mint = vec!["token", "mint", "--agent", "a", "--tenant", "t"];
        mint.extend(grant);
        let err = cg.stderr_of_failure(&mint);
        assert!(err.contains(says), "{grant:?}: {err}");
    }
    let err = cg.stderr_of_failure(&["token", "inspect", "garbage!"]);
    assert!(err.contains("malformed token"), "{err}");
    let err = cg.stderr_of_failure(&["task", "end", "no-such-task"]);
    assert!(err.contains("no task `no-such-task`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_agent_token_kills_its_tasks_even_in_a_running_server() {
    let cg = Capgate::new();
    let agent = cg.mint("rogue", "acme", &["fs_write"], &[]);
    let (_id, task) = cg.task(&agent, &["fs_write"], &["fs_write=acme/out/"]);
    let server = cg.serve_http();
    let client = server.client(&task).await;
    let a = json!({"path": "acme/out/a.txt", "content": "a"});
    call_ok(&client, "fs_write", a).await;
    // Another process (the CLI) revokes the agent token while the server runs.
    cg.stdout_of(&["token", "revoke", &agent, "--reason", "compromised"]);
    // The open session is refused at the HTTP layer.
    let b = json!({"path": "acme/out/b.txt", "content": "b"});
    call_refused(&client, "fs_write", b).await;
    assert!(!cg.root.join("acme/out/b.txt").exists());
    let again = json!({"purpose": "again", "tools": ["fs_write"], "approved_by": "x"});
    let resp = server.post_task(&agent, None, &again).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("compromised"));
}

/// The Host check is off only when asked for by name (`["*"]`), never by an empty list, and
/// never together with the header-less development token.
#[test]
fn the_host_check_is_never_off_by_accident() {
    let empty = Capgate::new();
    empty.append_config("[server]\nallowed_hosts = []\n");
    let err = empty.stderr_of_failure(&["serve", "--http", "127.0.0.1:0"]);
    assert!(err.contains("server.allowed_hosts"), "{err}");

    let any = Capgate::with_config("[server]\nallowed_hosts = [\"*\"]\n");
    let token_file = any.base().join("dev-token");
    std::fs::write(&token_file, any.mint("dev", "acme", &["fs_read"], &[])).unwrap();
    let err = any.stderr_of_failure(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--dev-headerless-token",
        token_file.to_str().unwrap(),
    ]);
    assert!(
        err.contains("server.allowed_hosts") && err.contains("header-less"),
        "{err}"
    );
}
