//! The Wyoming server announced by zeroconf (mDNS/DNS-SD) as `_wyoming._tcp.local.`, the way
//! Home Assistant discovers Wyoming services. mdns-sd runs its own thread.

use std::net::SocketAddr;

use mdns_sd::{ServiceDaemon, ServiceInfo};

pub const SERVICE_TYPE: &str = "_wyoming._tcp.local.";

/// A registered announcement; withdrawn (a goodbye packet) when dropped.
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

/// Announces `name` at `listen`'s port: on `listen`'s address, or on every interface's
/// addresses when it listens on all (`0.0.0.0`, `::`).
pub fn announce(name: &str, listen: SocketAddr) -> anyhow::Result<Announcement> {
    let daemon = ServiceDaemon::new()
        .map_err(|e| anyhow::anyhow!("zeroconf: cannot start the mDNS responder: {e}"))?;
    let host = format!(
        "{}.local.",
        crate::config::device_id_from_hostname(&crate::config::hostname())
    );
    let properties: &[(&str, &str)] = &[];
    let info = if listen.ip().is_unspecified() {
        ServiceInfo::new(SERVICE_TYPE, name, &host, (), listen.port(), properties)
            .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            name,
            &host,
            listen.ip(),
            listen.port(),
            properties,
        )
    }
    .map_err(|e| anyhow::anyhow!("zeroconf: wyoming.name {name:?}: {e}"))?;
    let fullname = info.get_fullname().to_string();
    daemon
        .register(info)
        .map_err(|e| anyhow::anyhow!("zeroconf: cannot register {fullname}: {e}"))?;
    Ok(Announcement { daemon, fullname })
}

impl Announcement {
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(std::time::Duration::from_millis(500));
        }
        let _ = self.daemon.shutdown();
    }
}
