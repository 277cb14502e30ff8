//! The ladder as terminal text, as an SVG picture and as JSON for tests.

use std::fmt::Write as _;

use serde_json::json;
use svg::node::element::{Definitions, Line, Marker, Path, Rectangle, Text, Title};
use svg::Document;

use crate::model::{Conn, Ladder};

/// One line per connection: number, role, leg, real endpoints, the socket
/// that handled it and what the gateway's log says.
fn legend(l: &Ladder) -> Vec<String> {
    l.conns
        .iter()
        .map(|c| {
            let mut s = format!(
                "#{:<2} {:<7} {:<11} {:<4} {} > {}  {}",
                c.id,
                c.role_text(),
                c.leg_text(),
                l.lifelines[c.gateway + 1],
                c.initiator,
                c.responder,
                c.socket_text
            );
            for n in &c.notes {
                let _ = write!(s, "; {n}");
            }
            s
        })
        .collect()
}

fn conn_summary(c: &Conn) -> String {
    format!("{} bytes >, {} bytes <", c.bytes[0], c.bytes[1])
}

pub fn text(l: &Ladder, captions: &[String]) -> String {
    const W: usize = 24;
    let n = l.lifelines.len();
    let width = (n - 1) * W + 1;
    let mut out = String::new();
    let _ = writeln!(out, "{}", l.title);
    for c in captions {
        let _ = writeln!(out, "  {c}");
    }
    let _ = writeln!(out, "\nconnections (real endpoints; the gateway socket that handled each):");
    for (line, c) in legend(l).iter().zip(&l.conns) {
        let _ = writeln!(out, "  {line}  [{}]", conn_summary(c));
    }
    let _ = writeln!(out);
    // lifeline names, centred on their columns
    let mut head = vec![b' '; width + 2 * W];
    for (i, name) in l.lifelines.iter().enumerate() {
        let name: String = name.chars().take(W - 2).collect();
        let start = (i * W + W / 2).saturating_sub(name.len() / 2);
        for (k, b) in name.bytes().enumerate() {
            if let Some(slot) = head.get_mut(start + k) {
                *slot = b;
            }
        }
    }
    let _ = writeln!(out, "  t (s)  {}", String::from_utf8_lossy(&head).trim_end());
    for e in &l.events {
        let mut row = vec![' '; width];
        for i in 0..n {
            row[i * W] = '|';
        }
        let (a, b) = (e.from.min(e.to) * W, e.from.max(e.to) * W);
        if a == b {
            row[a] = '*';
        } else {
            for slot in &mut row[a + 1..b] {
                *slot = '-';
            }
            if e.to > e.from {
                row[b - 1] = '>';
            } else {
                row[a + 1] = '<';
            }
            if let Some(v) = e.via {
                row[v * W] = '+';
            }
            if let Some(id) = e.conn {
                let tag = format!(" #{id} ");
                // beside the gateway a forwarded arrow crosses, not over it
                let centre = if e.via.is_some() { a + W / 2 } else { (a + b) / 2 };
                let mid = centre - tag.len() / 2;
                for (k, ch) in tag.chars().enumerate() {
                    row[mid + k] = ch;
                }
            }
        }
        let row: String = row.into_iter().collect();
        let label = e.label.split_once(' ').filter(|_| e.conn.is_some()).map_or(e.label.as_str(), |x| x.1);
        let _ = writeln!(out, "{:>7.3}  {row}  {label}", e.t - l.t0);
    }
    out
}

const PALETTE: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

pub fn svg(l: &Ladder, captions: &[String]) -> String {
    let n = l.lifelines.len();
    let row_h = 20.0;
    let font = 12.0;
    let char_w = 7.2;
    // a SYN names the connection's real endpoints, the one thing an arrow
    // must never cut: columns widen until the longest fits (IPv6)
    let syn_chars = l
        .events
        .iter()
        .filter(|e| e.conn.is_some() && e.label.contains(" SYN "))
        .map(|e| e.label.chars().count())
        .max()
        .unwrap_or(0);
    let col = f64::max(if n > 3 { 300.0 } else { 380.0 }, syn_chars as f64 * char_w + 24.0);
    let box_w = |name: &str| (name.len() as f64 * char_w + 16.0).min(col - 10.0);
    // the first lifeline's name box stays inside the picture
    let left = f64::max(80.0, l.lifelines.first().map_or(0.0, |name| box_w(name) / 2.0 + 8.0));
    let legend = legend(l);
    let legend_w = legend.iter().map(|s| s.len()).max().unwrap_or(0) as f64 * char_w;
    let width = (left + (n - 1) as f64 * col + 60.0).max(legend_w + 40.0);
    let mut y = 28.0;
    let mut doc = Document::new().set("font-family", "monospace").set("font-size", font);
    let mut body: Vec<Box<dyn svg::Node>> = Vec::new();
    body.push(Box::new(
        Text::new(l.title.clone()).set("x", 20).set("y", y).set("font-size", 16).set("font-weight", "bold"),
    ));
    for c in captions {
        y += 18.0;
        body.push(Box::new(Text::new(c.clone()).set("x", 20).set("y", y)));
    }
    y += 28.0;
    body.push(Box::new(
        Text::new("connections (real endpoints; the gateway socket that handled each)")
            .set("x", 20)
            .set("y", y)
            .set("font-weight", "bold"),
    ));
    for (line, c) in legend.iter().zip(&l.conns) {
        y += 17.0;
        body.push(Box::new(
            Text::new(line.clone()).set("x", 20).set("y", y).set("fill", PALETTE[(c.id - 1) % PALETTE.len()]),
        ));
    }
    y += 40.0;
    let x_of = |i: usize| left + i as f64 * col;
    let top = y;
    let bottom = top + 20.0 + l.events.len() as f64 * row_h + 10.0;
    for (i, name) in l.lifelines.iter().enumerate() {
        let x = x_of(i);
        let w = box_w(name);
        body.push(Box::new(
            Rectangle::new()
                .set("x", x - w / 2.0)
                .set("y", top - 22.0)
                .set("width", w)
                .set("height", 24)
                .set("rx", 4)
                .set("fill", "#eeeeee")
                .set("stroke", "#333333"),
        ));
        body.push(Box::new(
            Text::new(name.clone()).set("x", x).set("y", top - 5.0).set("text-anchor", "middle"),
        ));
        body.push(Box::new(
            Line::new()
                .set("x1", x)
                .set("y1", top + 2.0)
                .set("x2", x)
                .set("y2", bottom)
                .set("stroke", "#999999")
                .set("stroke-dasharray", "4 3"),
        ));
    }
    let mut defs = Definitions::new();
    for (k, colour) in PALETTE.iter().enumerate() {
        defs = defs.add(
            Marker::new()
                .set("id", format!("head{k}"))
                .set("markerWidth", 10)
                .set("markerHeight", 8)
                .set("refX", 9)
                .set("refY", 4)
                .set("orient", "auto")
                .add(Path::new().set("d", "M0,0 L10,4 L0,8 z").set("fill", *colour)),
        );
    }
    for (k, e) in l.events.iter().enumerate() {
        let yy = top + 24.0 + k as f64 * row_h;
        body.push(Box::new(
            Text::new(format!("{:.3}", e.t - l.t0)).set("x", 8).set("y", yy + 4.0).set("fill", "#666666"),
        ));
        if e.from == e.to {
            let x = x_of(e.from);
            body.push(Box::new(
                Rectangle::new()
                    .set("x", x - 5.0)
                    .set("y", yy - 5.0)
                    .set("width", 10)
                    .set("height", 10)
                    .set("fill", "#ff7f0e")
                    .set("transform", format!("rotate(45 {x} {yy})")),
            ));
            let w = e.label.len() as f64 * char_w + 8.0;
            body.push(Box::new(
                Rectangle::new()
                    .set("x", x + 10.0)
                    .set("y", yy - 8.0)
                    .set("width", w)
                    .set("height", 16)
                    .set("fill", "#fff3e0")
                    .set("stroke", "#ff7f0e"),
            ));
            body.push(Box::new(Text::new(e.label.clone()).set("x", x + 14.0).set("y", yy + 4.0)));
            continue;
        }
        let colour_k = e.conn.map_or(0, |id| (id - 1) % PALETTE.len());
        let colour = PALETTE[colour_k];
        let (x1, x2) = (x_of(e.from), x_of(e.to));
        let inset = if x2 > x1 { -2.0 } else { 2.0 };
        let mut line = Line::new()
            .set("x1", x1)
            .set("y1", yy)
            .set("x2", x2 + inset)
            .set("y2", yy)
            .set("stroke", colour)
            .set("stroke-width", 1.5)
            .set("marker-end", format!("url(#head{colour_k})"));
        if e.via.is_some() {
            line = line.set("stroke-dasharray", "7 3");
        }
        body.push(Box::new(line.add(Title::new(e.label.clone()))));
        if let Some(v) = e.via {
            body.push(Box::new(
                Rectangle::new()
                    .set("x", x_of(v) - 3.0)
                    .set("y", yy - 3.0)
                    .set("width", 6)
                    .set("height", 6)
                    .set("fill", colour),
            ));
        }
        let span = (x2 - x1).abs();
        let max_chars = ((span - 12.0) / char_w).max(4.0) as usize;
        let label: String = if e.label.chars().count() > max_chars {
            let mut s: String = e.label.chars().take(max_chars - 1).collect();
            s.push('…');
            s
        } else {
            e.label.clone()
        };
        body.push(Box::new(
            Text::new(label)
                .set("x", (x1 + x2) / 2.0)
                .set("y", yy - 4.0)
                .set("text-anchor", "middle")
                .set("fill", colour),
        ));
    }
    let height = bottom + 20.0;
    doc = doc
        .set("width", width)
        .set("height", height)
        .set("viewBox", (0, 0, width, height))
        .add(defs)
        .add(Rectangle::new().set("width", "100%").set("height", "100%").set("fill", "white"));
    for node in body {
        doc = doc.add(node);
    }
    doc.to_string()
}

pub fn json(l: &Ladder) -> serde_json::Value {
    json!({
        "title": l.title,
        "lifelines": l.lifelines,
        "connections": l.conns.iter().map(|c| json!({
            "id": c.id,
            "gateway": l.lifelines[c.gateway + 1],
            "leg": c.leg_text(),
            "role": c.role_text(),
            "initiator": c.initiator.to_string(),
            "responder": c.responder.to_string(),
            "opened_by_gateway": c.opened_by_gateway,
            "socket": c.socket.key(),
            "socket_text": c.socket_text,
            "session": c.session,
            "data": c.data,
            "notes": c.notes,
            "bytes_to_responder": c.bytes[0],
            "bytes_to_initiator": c.bytes[1],
        })).collect::<Vec<_>>(),
        "events": l.events.iter().map(|e| json!({
            "t": e.t - l.t0,
            "conn": e.conn,
            "from": l.lifelines[e.from],
            "to": l.lifelines[e.to],
            "via": e.via.map(|v| l.lifelines[v].clone()),
            "label": e.label,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;

    fn ladder(client: &str, syn: &str) -> Ladder {
        Ladder {
            title: "t".into(),
            lifelines: vec![client.into(), "gateway (ftpgate)".into(), "server".into()],
            conns: Vec::new(),
            events: vec![Event { t: 1.0, conn: Some(1), from: 0, to: 1, via: None, label: syn.into() }],
            t0: 1.0,
        }
    }

    /// The x of the first `<rect` after `after`.
    fn rect_x_after(svg: &str, after: &str) -> f64 {
        let rest = &svg[svg.find(after).expect(after)..];
        let rect = &rest[rest.find("<rect").unwrap()..];
        let x = &rect[rect.find(" x=\"").unwrap() + 4..];
        x[..x.find('"').unwrap()].parse().unwrap()
    }

    /// `label` whole as the text of an element (the svg crate escapes `>`
    /// and puts the text on a line of its own).
    fn has_text(svg: &str, label: &str) -> bool {
        svg.contains(&format!("\n{}\n</text>", label.replace('>', "&gt;")))
    }

    #[test]
    fn ipv6_syn_labels_are_not_cut_and_the_client_box_is_inside() {
        let syn = "#1 SYN [2001:db8:1::10]:45796 > [2001:db8:2::10]:21";
        let svg = svg(&ladder("client 2001:db8:1::10", syn), &[]);
        assert!(has_text(&svg, syn), "the SYN label was cut:\n{svg}");
        // the first lifeline box: after the legend header
        assert!(rect_x_after(&svg, "gateway socket that handled each") >= 0.0, "{svg}");
    }

    #[test]
    fn ipv4_ladders_keep_their_columns() {
        let syn = "#1 SYN 192.0.2.10:45796 > 198.51.100.10:21";
        let svg = svg(&ladder("client 192.0.2.10", syn), &[]);
        assert!(has_text(&svg, syn), "{svg}");
        // lifelines at 80, 460, 840: the picture is as wide as before
        assert!(svg.contains("width=\"900\""), "{}", &svg[..200]);
    }
}
