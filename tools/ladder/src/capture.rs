//! TCP segments out of one interface's capture file.
//!
//! The lab captures each gateway interface on its own (`tcpdump -i gw-c`),
//! so every frame has an Ethernet header, and its source MAC tells who sent
//! it: the gateway (its own MAC) or the host on the other end of the link.
//! The addresses cannot tell: a transparent gateway sends with its peers'
//! addresses, which is the point of the whole exercise.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;

use etherparse::{LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::TsResolution;

/// One TCP segment as the capture saw it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Seconds since the epoch (the capture's clock is the machine's).
    pub t: f64,
    /// The gateway's own interface sent it.
    pub from_gateway: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    /// The payload bytes the capture kept (cut at the snap length).
    pub payload: Vec<u8>,
    /// The payload's length on the wire.
    pub len: u32,
}

/// Why a capture could not be read at all. A file that ends inside a
/// packet (tcpdump stopped mid-write) is not an error: reading stops there.
#[derive(Debug)]
pub enum CaptureError {
    Open(std::io::Error),
    Format(pcap_file::PcapError),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot open: {e}"),
            Self::Format(e) => write!(f, "not a pcap file tcpdump wrote: {e}"),
        }
    }
}

/// Parses a MAC written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Every TCP segment of the capture at `path`, in capture order.
/// `gateway_mac` is the MAC of the gateway's interface the capture ran on.
pub fn read_segments(path: &Path, gateway_mac: [u8; 6]) -> Result<Vec<Segment>, CaptureError> {
    let file = File::open(path).map_err(CaptureError::Open)?;
    let mut reader = PcapReader::new(BufReader::new(file)).map_err(CaptureError::Format)?;
    let frac_per_sec = match reader.header().ts_resolution {
        TsResolution::MicroSecond => 1e6,
        TsResolution::NanoSecond => 1e9,
    };
    let mut out = Vec::new();
    // raw packets: pcap-file 2's checked reader refuses every packet whose
    // wire length exceeds the snap length, i.e. every packet the snap
    // length cut, which is what a bounded capture is made of
    while let Some(Ok(packet)) = reader.next_raw_packet() {
        let t = f64::from(packet.ts_sec) + f64::from(packet.ts_frac) / frac_per_sec;
        if let Some(seg) = segment(t, &packet.data, gateway_mac) {
            out.push(seg);
        }
    }
    Ok(out)
}

fn segment(t: f64, frame: &[u8], gateway_mac: [u8; 6]) -> Option<Segment> {
    let sliced = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let from_gateway = match &sliced.link {
        // a frame neither from nor to the gateway is one a switch flooded
        // (its destination's port unknown, e.g. a failed gateway's MAC):
        // the gateway's stack drops it unread, so it is no part of the
        // gateway's story
        Some(LinkSlice::Ethernet2(eth)) if eth.source() == gateway_mac => true,
        Some(LinkSlice::Ethernet2(eth)) if eth.destination() == gateway_mac => false,
        _ => return None,
    };
    let (src_ip, dst_ip, l4_len) = match sliced.net.as_ref()? {
        LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            let l4 = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4);
            (h.source_addr().into(), h.destination_addr().into(), l4)
        }
        LaxNetSlice::Ipv6(ip) => {
            // the payload length counts the extension headers between the
            // fixed header and TCP, too
            let h = ip.header();
            let l4 = usize::from(h.payload_length()).saturating_sub(ip.extensions().slice().len());
            (h.source_addr().into(), h.destination_addr().into(), l4)
        }
    };
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return None;
    };
    let header_len = tcp.header_len();
    let len = l4_len.saturating_sub(header_len);
    let kept = tcp.payload();
    Some(Segment {
        t,
        from_gateway,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: kept[..kept.len().min(len)].to_vec(),
        len: u32::try_from(len).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_six_hex_bytes_only() {
        assert_eq!(parse_mac("02:00:5e:00:01:0a"), Some([2, 0, 0x5e, 0, 1, 10]));
        assert_eq!(parse_mac("02:00:5e:00:01"), None);
        assert_eq!(parse_mac("02:00:5e:00:01:0a:00"), None);
        assert_eq!(parse_mac("zz:00:5e:00:01:0a"), None);
    }

    #[test]
    fn segment_from_an_ethernet_frame_keeps_direction_and_payload() {
        let gw = [2, 0, 0, 0, 0, 1];
        let host = [2, 0, 0, 0, 0, 2];
        let builder = etherparse::PacketBuilder::ethernet2(host, gw)
            .ipv4([192, 0, 2, 10], [198, 51, 100, 10], 64)
            .tcp(40000, 21, 1000, 64000)
            .psh()
            .ack(5);
        let payload = b"USER anonymous\r\n";
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        let other = [2, 0, 0, 0, 0, 3];
        let mut flooded = frame.clone();
        flooded[..6].copy_from_slice(&other);
        assert!(segment(1.5, &flooded, gw).is_none(), "a frame for another MAC");
        let seg = segment(1.5, &frame, gw).unwrap();
        assert!(!seg.from_gateway);
        assert_eq!(seg.src.to_string(), "192.0.2.10:40000");
        assert_eq!(seg.dst.to_string(), "198.51.100.10:21");
        assert_eq!(seg.payload, payload);
        assert_eq!(seg.len, 16);
        // cut at a snap length: the wire length stays, the bytes kept shrink
        let cut = segment(1.5, &frame[..frame.len() - 6], gw).unwrap();
        assert_eq!(cut.len, 16);
        assert_eq!(cut.payload, b"USER anony");
    }

    fn v6(text: &str) -> [u8; 16] {
        text.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn segment_from_an_ipv6_frame_has_its_addresses_and_wire_length() {
        let gw = [2, 0, 0, 0, 0, 1];
        let host = [2, 0, 0, 0, 0, 2];
        let payload = b"EPRT |2|2001:db8:1::10|40001|\r\n";
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(gw, host)
            .ipv6(v6("2001:db8:1::10"), v6("2001:db8:2::10"), 64)
            .tcp(40000, 21, 7, 64000)
            .ack(9)
            .write(&mut frame, payload)
            .unwrap();
        let seg = segment(2.0, &frame, gw).unwrap();
        assert!(seg.from_gateway);
        assert_eq!(seg.src.to_string(), "[2001:db8:1::10]:40000");
        assert_eq!(seg.dst.to_string(), "[2001:db8:2::10]:21");
        assert_eq!(seg.len as usize, payload.len());
        assert_eq!(seg.payload, payload);
        let cut = segment(2.0, &frame[..frame.len() - 10], gw).unwrap();
        assert_eq!(cut.len as usize, payload.len());
        assert_eq!(cut.payload, &payload[..payload.len() - 10]);
    }

    #[test]
    fn ipv6_extension_headers_are_not_payload() {
        let gw = [2, 0, 0, 0, 0, 1];
        let host = [2, 0, 0, 0, 0, 2];
        let payload = b"229 Entering Extended Passive Mode (|||30001|)\r\n";
        let mut tcp = Vec::new();
        etherparse::TcpHeader::new(21, 40000, 5, 64000).write(&mut tcp).unwrap();
        // a hop-by-hop options header (8 bytes: next header TCP, length 0,
        // PadN over the rest) between the IPv6 header and TCP
        let hop_by_hop = [6u8, 0, 1, 4, 0, 0, 0, 0];
        let ip = etherparse::Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: u16::try_from(hop_by_hop.len() + tcp.len() + payload.len()).unwrap(),
            next_header: etherparse::IpNumber::IPV6_HEADER_HOP_BY_HOP,
            hop_limit: 64,
            source: v6("2001:db8:2::10"),
            destination: v6("2001:db8:1::10"),
        };
        let mut frame = Vec::new();
        etherparse::Ethernet2Header {
            source: host,
            destination: gw,
            ether_type: etherparse::EtherType::IPV6,
        }
        .write(&mut frame)
        .unwrap();
        ip.write(&mut frame).unwrap();
        frame.extend_from_slice(&hop_by_hop);
        frame.extend_from_slice(&tcp);
        frame.extend_from_slice(payload);
        let seg = segment(3.0, &frame, gw).unwrap();
        assert!(!seg.from_gateway);
        assert_eq!(seg.src.to_string(), "[2001:db8:2::10]:21");
        assert_eq!(seg.len as usize, payload.len());
        assert_eq!(seg.payload, payload);
    }
}
