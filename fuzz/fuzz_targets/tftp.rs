//! A datagram on the TFTP port, or on a transfer's port: the packet parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kindling::tftp::packet::parse(data);
});
