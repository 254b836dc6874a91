//! TFTP packets (RFC 1350) with options (RFC 2347 OACK, 2348 blksize, 2349 timeout/tsize,
//! 7440 windowsize): pure parsing and building, no I/O.

/// RFC 1350 opcodes.
pub const RRQ: u16 = 1;
/// Write request.
pub const WRQ: u16 = 2;
/// Data block.
pub const DATA: u16 = 3;
/// Acknowledgement.
pub const ACK: u16 = 4;
/// Error.
pub const ERROR: u16 = 5;
/// Option acknowledgement (RFC 2347).
pub const OACK: u16 = 6;

/// TFTP error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: see the message.
    Undefined = 0,
    /// 1.
    FileNotFound = 1,
    /// 2.
    AccessViolation = 2,
    /// 4.
    IllegalOperation = 4,
    /// 5.
    UnknownTransferId = 5,
    /// 8 (RFC 2347): the client ends a transfer after the OACK, e.g. after a tsize probe.
    OptionsRefused = 8,
}

/// Options a request may carry; values out of range are treated as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `blksize`, 8..=65464.
    pub block_size: Option<u16>,
    /// `timeout` in seconds, 1..=255.
    pub timeout: Option<u8>,
    /// `tsize` (a read request sends 0 and asks for the size).
    pub transfer_size: Option<u64>,
    /// `windowsize`, 1..=65535.
    pub window_size: Option<u16>,
}

impl Options {
    /// Whether any option is present (then the server answers with an OACK).
    pub fn any(&self) -> bool {
        *self != Options::default()
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// RRQ or WRQ.
    pub opcode: u16,
    /// The file name as sent.
    pub filename: String,
    /// `octet`, `netascii` or `mail`, lowercased.
    pub mode: String,
    /// Recognised options.
    pub options: Options,
}

/// What a datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// RRQ or WRQ.
    Request(Request),
    /// ACK of a block.
    Ack(u16),
    /// ERROR from the peer.
    Error(u16, String),
    /// DATA or OACK (never sent to a server).
    Other(u16),
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than an opcode.
    #[error("shorter than 4 bytes")]
    Short,
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    Opcode(u16),
    /// A request without NUL-terminated name and mode, or not UTF-8.
    #[error("malformed request: {0}")]
    Request(&'static str),
}

/// Parse one datagram.
pub fn parse(bytes: &[u8]) -> Result<Packet, ParseError> {
    if bytes.len() < 2 {
        return Err(ParseError::Short);
    }
    let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
    let rest = &bytes[2..];
    match opcode {
        RRQ | WRQ => parse_request(opcode, rest).map(Packet::Request),
        ACK => {
            let b = rest.get(..2).ok_or(ParseError::Short)?;
            Ok(Packet::Ack(u16::from_be_bytes([b[0], b[1]])))
        }
        ERROR => {
            let b = rest.get(..2).ok_or(ParseError::Short)?;
            let msg = rest[2..].split(|&c| c == 0).next().unwrap_or(&[]);
            Ok(Packet::Error(
                u16::from_be_bytes([b[0], b[1]]),
                String::from_utf8_lossy(msg).into_owned(),
            ))
        }
        DATA | OACK => Ok(Packet::Other(opcode)),
        other => Err(ParseError::Opcode(other)),
    }
}

fn parse_request(opcode: u16, rest: &[u8]) -> Result<Request, ParseError> {
    let mut fields = rest.split(|&c| c == 0);
    let text = |f: Option<&[u8]>, what: &'static str| -> Result<String, ParseError> {
        let f = f.ok_or(ParseError::Request(what))?;
        String::from_utf8(f.to_vec()).map_err(|_| ParseError::Request("not UTF-8"))
    };
    if rest.last() != Some(&0) {
        return Err(ParseError::Request("not NUL-terminated"));
    }
    let filename = text(fields.next(), "no file name")?;
    let mode = text(fields.next(), "no mode")?.to_ascii_lowercase();
    if filename.is_empty() || mode.is_empty() {
        return Err(ParseError::Request("empty file name or mode"));
    }
    // A file name never holds a control character; one that does would break a log line.
    if filename.chars().any(char::is_control) || filename.len() > 255 {
        return Err(ParseError::Request(
            "file name with control characters or longer than 255 bytes",
        ));
    }
    let mut options = Options::default();
    // Options come in name/value pairs; the final split yields an empty piece after the NUL.
    let pairs: Vec<&[u8]> = fields.collect();
    for pair in pairs.chunks(2) {
        let [name, value] = pair else { break };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "blksize" => {
                options.block_size = value.parse().ok().filter(|v| (8..=65464).contains(v));
            }
            "timeout" => options.timeout = value.parse().ok().filter(|v| *v >= 1),
            "tsize" => options.transfer_size = value.parse().ok(),
            "windowsize" => options.window_size = value.parse().ok().filter(|v| *v >= 1),
            _ => {}
        }
    }
    Ok(Request {
        opcode,
        filename,
        mode,
        options,
    })
}

/// An OACK with the options granted.
pub fn oack(o: &Options) -> Vec<u8> {
    let mut out = OACK.to_be_bytes().to_vec();
    let mut put = |name: &str, value: String| {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    };
    if let Some(v) = o.block_size {
        put("blksize", v.to_string());
    }
    if let Some(v) = o.timeout {
        put("timeout", v.to_string());
    }
    if let Some(v) = o.transfer_size {
        put("tsize", v.to_string());
    }
    if let Some(v) = o.window_size {
        put("windowsize", v.to_string());
    }
    out
}

/// A DATA packet's header: opcode and block number.
pub fn data_header(block: u16) -> [u8; 4] {
    let [op_hi, op_lo] = DATA.to_be_bytes();
    let [hi, lo] = block.to_be_bytes();
    [op_hi, op_lo, hi, lo]
}

/// A DATA packet header followed by `data`.
pub fn data(block: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&data_header(block));
    out.extend_from_slice(data);
    out
}

/// An ERROR packet.
pub fn error(code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut out = ERROR.to_be_bytes().to_vec();
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
    out.push(0);
    out
}

/// An ACK (used by tests and benchmarks acting as clients).
pub fn ack(block: u16) -> Vec<u8> {
    let mut out = ACK.to_be_bytes().to_vec();
    out.extend_from_slice(&block.to_be_bytes());
    out
}

/// A read request (used by tests acting as clients).
pub fn rrq(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = RRQ.to_be_bytes().to_vec();
    for s in [filename, "octet"] {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    for (k, v) in options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovmf_style_request_with_options() {
        let p = parse(&rrq(
            "ipxe.efi",
            &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
        ))
        .unwrap();
        let Packet::Request(r) = p else { panic!() };
        assert_eq!(r.filename, "ipxe.efi");
        assert_eq!(r.mode, "octet");
        assert_eq!(
            r.options,
            Options {
                block_size: Some(1468),
                timeout: None,
                transfer_size: Some(0),
                window_size: Some(4),
            }
        );
    }

    #[test]
    fn options_are_case_insensitive_and_out_of_range_values_ignored() {
        let bytes = [
            &[0u8, 1][..],
            b"f\0OCTET\0BLKSIZE\x004\0Timeout\x000\0WindowSize\x000\0unknown\0x\0tsize\0zz\0",
        ]
        .concat();
        let Packet::Request(r) = parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(r.mode, "octet");
        assert_eq!(r.options, Options::default());
    }

    #[test]
    fn malformed_packets_are_errors_never_panics() {
        for bad in [
            &b""[..],
            &[0],
            &[0, 9],
            &[0, 1],
            &[0, 1, b'f'],
            &[0, 1, 0, 0],
            &[0, 4, 1],
            &[0, 5],
            &[0, 1, 0xff, 0xfe, 0, b'o', 0],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[0, 4, 0, 7]).unwrap(), Packet::Ack(7));
        assert_eq!(
            parse(&error(ErrorCode::OptionsRefused, "size only")).unwrap(),
            Packet::Error(8, "size only".into())
        );
        let mut rng = crate::testkit::Rng(0x7f7f_0000_0000_0069);
        for _ in 0..20_000 {
            let len = rng.below(40);
            let mut b: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            if b.len() >= 2 && rng.below(2) == 0 {
                b[0] = 0;
                b[1] = 1 + rng.below(6) as u8;
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn built_packets_have_the_wire_format() {
        assert_eq!(data(1, b"ab"), [0, 3, 0, 1, b'a', b'b']);
        assert_eq!(ack(258), [0, 4, 1, 2]);
        assert_eq!(
            oack(&Options {
                block_size: Some(1468),
                timeout: None,
                transfer_size: Some(1024),
                window_size: Some(4),
            }),
            [
                &[0u8, 6][..],
                b"blksize\x001468\0tsize\x001024\0windowsize\x004\0"
            ]
            .concat()
        );
        assert_eq!(
            error(ErrorCode::FileNotFound, "nope"),
            [&[0u8, 5, 0, 1][..], b"nope\0"].concat()
        );
    }
}
