//! DHCP requests as clients send them, for the unit tests of every part of the service.

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType};

use crate::mac::MacAddr;
use crate::pxe::{self, BootFiles, ClientInfo, Decision, MachineBoot};

/// A request of `kind` from `mac`: transaction id 7, broadcast flag, no options but the type.
pub(crate) fn request(kind: MessageType, mac: MacAddr) -> Message {
    let mut m = Message::new_with_id(
        7,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

/// A PXE client's request: vendor class `class`, option 93 `arch`, and a client GUID
/// (option 97) of `guid`.
pub(crate) fn pxe_request(
    kind: MessageType,
    mac: MacAddr,
    class: &str,
    arch: Architecture,
    guid: Vec<u8>,
) -> Message {
    let mut m = request(kind, mac);
    let o = m.opts_mut();
    o.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    o.insert(DhcpOption::ClientSystemArchitecture(arch));
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    m
}

/// The classifier's decision for a client whose profile netboots.
pub(crate) fn netboot_decision(info: &ClientInfo, base_url: &str) -> Decision {
    let machine = MachineBoot::Netboot {
        profile: "w".into(),
        files: Default::default(),
        loader: Default::default(),
    };
    pxe::decide(info, &machine, &BootFiles::default(), base_url)
}
