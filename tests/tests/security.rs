//! Credentials and TLS against a real mosquitto: sotad connects with user name and password
//! (or a password file), verifies the broker's certificate with the configured CA, and a
//! wrong password or an untrusted CA leaves it retrying, never crashing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sotad_tests::{ENGINES_OFF, Mosquitto, Sotad, TestClient};

const WAIT: Duration = Duration::from_secs(15);

fn with_password(dir: &Path) -> anyhow::Result<String> {
    let file = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&file)
        .args(["robot", "s3cret"])
        .status()?
        .success();
    anyhow::ensure!(ok, "mosquitto_passwd failed");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    Ok(format!(
        "allow_anonymous false\npassword_file {}\n",
        file.display()
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_sent_and_a_wrong_password_is_retried_not_fatal() {
    let broker = Mosquitto::start_with(with_password).unwrap();
    let good = Sotad::config_for(
        broker.port,
        "auth",
        "username = \"robot\"\npassword = \"s3cret\"",
    );
    let sotad = Sotad::start(&good, "auth").unwrap();

    // A client with the same credentials sees sotad online and answering.
    let mut client = TestClient::connect_with_credentials(broker.port, "t-auth", "robot", "s3cret")
        .await
        .unwrap();
    client.subscribe(&sotad.topic("status")).await.unwrap();
    client
        .expect(&sotad.topic("status"), WAIT, |p| p == b"online")
        .await
        .unwrap();

    // A password file works the same way.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let from_file = Sotad::config_for(
        broker.port,
        "authfile",
        &format!("username = \"robot\"\npassword_file = \"{}\"", pw.display()),
    );
    let sotad2 = Sotad::start(&from_file, "authfile").unwrap();
    client.subscribe(&sotad2.topic("status")).await.unwrap();
    client
        .expect(&sotad2.topic("status"), WAIT, |p| p == b"online")
        .await
        .unwrap();

    // A wrong password: refused by the broker, retried with back-off, the process stays up.
    let bad = Sotad::config_for(
        broker.port,
        "badauth",
        "username = \"robot\"\npassword = \"nope\"",
    );
    let mut sotad3 = Sotad::start(&bad, "badauth").unwrap();
    let log = sotad3
        .assert_still_running_after(Duration::from_secs(2))
        .await;
    assert!(
        log.contains("NotAuthorized") || log.contains("BadUserNamePassword"),
        "{log}"
    );
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 and localhost.
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sotad test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    )?;
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    )?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
        dir,
    )?;
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(
            dir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_the_configured_ca_and_an_untrusted_ca_is_retried() {
    let certs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        certs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    make_certs(certs.path()).unwrap();
    let c = certs.path().to_path_buf();
    // A plain listener for the test client, and a TLS listener for sotad.
    let tls_port = sotad_tests::free_port();
    let broker = Mosquitto::start_with(move |_| {
        Ok(format!(
            "listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            c.display()
        ))
    })
    .unwrap();
    let tls = format!(
        "[device]\nid = \"tls\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {tls_port}\nreconnect_min_ms = 100\n\
         [mqtt.tls]\nenabled = true\nca_file = \"{}/ca.pem\"\n{ENGINES_OFF}",
        certs.path().display()
    );
    let sotad = Sotad::start(&tls, "tls").unwrap();
    let mut client = TestClient::connect(broker.port, "t-tls", false)
        .await
        .unwrap();
    client.subscribe(&sotad.topic("status")).await.unwrap();
    client
        .expect(&sotad.topic("status"), WAIT, |p| p == b"online")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sotad.log(), broker.log()));
    client.subscribe(&sotad.topic("pong")).await.unwrap();
    client
        .publish(&sotad.topic("ping"), r#"{"id":"over-tls"}"#)
        .await
        .unwrap();
    client
        .expect_id(&sotad.topic("pong"), "over-tls", WAIT)
        .await
        .unwrap();

    // Trusting only the system CAs, the self-signed broker is refused and retried.
    let untrusted = tls
        .replace("id = \"tls\"", "id = \"tls-untrusted\"")
        .replace(
            &format!("{}/ca.pem", certs.path().display()),
            "/etc/ssl/certs/ca-certificates.crt",
        );
    let mut refused = Sotad::start(&untrusted, "tls-untrusted").unwrap();
    let log = refused
        .assert_still_running_after(Duration::from_secs(2))
        .await;
    assert!(
        log.contains("reconnecting") && log.to_lowercase().contains("certificate"),
        "{log}"
    );
}
