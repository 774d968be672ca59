//! An incremental Server-Sent Events parser that *observes* a provider's stream so usage can be metered.
//!
//! The proxy forwards every chunk to the client as it arrives and hands a copy to [`SseParser::feed`];
//! the parser never decides what the client sees. The one exception is [`SseFrameFilter`], which the
//! proxy uses only when it must withhold an event it injected itself (OpenAI's usage-only chunk).
//!
//! Parsing follows the WHATWG "event stream interpretation" rules: `\n`, `\r\n` and `\r` line endings,
//! `:` comments, `event`/`data`/`id`/`retry` fields, one optional leading space stripped from a value, a
//! BOM skipped at the start. Deviation, deliberate: at end of stream a pending event is dispatched
//! rather than discarded (see [`SseParser::finish`]), because a provider that closes without the final
//! blank line has still told us what it billed.

/// The UTF-8 byte order mark, skipped once at the very start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Default cap on one event's size. Provider events carrying usage are a few KiB; 1 MiB leaves room
/// for large tool-call deltas while bounding what one connection can make us hold.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `"message"` when the event had none (as the spec says).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event ID seen on the stream at dispatch time, if any.
    pub id: Option<String>,
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// An event larger than the cap: its content was discarded as it arrived (memory stays bounded)
    /// and only its size is reported, so the caller can tell metering may have missed something.
    Dropped {
        bytes: usize,
    },
}

/// An incremental SSE parser. Feed it arbitrary byte chunks; it never panics and never holds more
/// than about `max_event_bytes` of one event.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// `Some` until the first bytes have ruled the BOM in or out; holds a proper prefix of it.
    bom_pending: Option<Vec<u8>>,
    /// The last chunk ended on `\r`: a `\n` opening the next chunk belongs to that line ending.
    after_cr: bool,
    line: Vec<u8>,
    /// Bytes in the current line, counted even when they are not stored (after an overflow).
    line_len: usize,
    event_type: String,
    data: String,
    /// Bytes of all lines of the current event, line endings excluded.
    event_bytes: usize,
    overflowed: bool,
    last_event_id: String,
    retry_ms: Option<u64>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            bom_pending: Some(Vec::with_capacity(BOM.len())),
            after_cr: false,
            line: Vec::new(),
            line_len: 0,
            event_type: String::new(),
            data: String::new(),
            event_bytes: 0,
            overflowed: false,
            last_event_id: String::new(),
            retry_ms: None,
        }
    }

    /// The reconnection time announced by the last valid `retry:` field.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Parses a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut items = Vec::new();
        self.feed_with(chunk, |item, _end| {
            if let Some(item) = item {
                items.push(item);
            }
        });
        items
    }

    /// Ends the stream: a pending line is taken as complete and a pending event with data is
    /// dispatched. The parser is then ready for a new stream.
    pub fn finish(&mut self) -> Vec<SseItem> {
        let mut items = Vec::new();
        if let Some(pending) = self.bom_pending.take() {
            self.append_to_line(&pending);
        }
        if self.line_len > 0 {
            self.end_line(&mut |item, _| items.extend(item), 0);
        }
        self.end_line(&mut |item, _| items.extend(item), 0);
        *self = SseParser::new(self.max_event_bytes);
        items
    }

    /// Parses a chunk, calling `on_boundary` at every blank line with the item it dispatched (if any)
    /// and the offset in `chunk` just past that blank line's line ending.
    fn feed_with(&mut self, chunk: &[u8], mut on_boundary: impl FnMut(Option<SseItem>, usize)) {
        let mut at = 0;
        if let Some(mut pending) = self.bom_pending.take() {
            while pending.len() < BOM.len() && at < chunk.len() && chunk[at] == BOM[pending.len()] {
                pending.push(chunk[at]);
                at += 1;
            }
            if pending.len() < BOM.len() {
                if at == chunk.len() {
                    // Still a possible BOM prefix: decide when more bytes come.
                    self.bom_pending = Some(pending);
                    return;
                }
                // Not a BOM: those bytes are content. A BOM prefix holds no line ending.
                self.append_to_line(&pending);
            }
        }

        if self.after_cr && at < chunk.len() {
            self.after_cr = false;
            if chunk[at] == b'\n' {
                at += 1;
            }
        }

        while at < chunk.len() {
            let rest = &chunk[at..];
            let Some(eol) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.append_to_line(rest);
                break;
            };
            self.append_to_line(&rest[..eol]);
            at += eol + 1;
            if rest[eol] == b'\r' {
                match chunk.get(at) {
                    Some(b'\n') => at += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(&mut on_boundary, at);
        }
    }

    fn append_to_line(&mut self, bytes: &[u8]) {
        self.line_len = self.line_len.saturating_add(bytes.len());
        self.event_bytes = self.event_bytes.saturating_add(bytes.len());
        if self.overflowed {
            return;
        }
        if self.event_bytes > self.max_event_bytes {
            // Drop what we hold now rather than at dispatch, so memory never exceeds the cap.
            self.overflowed = true;
            self.line = Vec::new();
            self.data = String::new();
            self.event_type = String::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_boundary: &mut impl FnMut(Option<SseItem>, usize), end: usize) {
        let line = std::mem::take(&mut self.line);
        let was_blank = self.line_len == 0;
        self.line_len = 0;
        if was_blank {
            let item = self.dispatch();
            on_boundary(item, end);
            return;
        }
        if !self.overflowed {
            self.process_field(&line);
        }
    }

    fn dispatch(&mut self) -> Option<SseItem> {
        let bytes = std::mem::take(&mut self.event_bytes);
        let event_type = std::mem::take(&mut self.event_type);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.overflowed) {
            return Some(SseItem::Dropped { bytes });
        }
        if data.is_empty() {
            return None;
        }
        if data.ends_with('\n') {
            data.pop();
        }
        Some(SseItem::Event(SseEvent {
            event: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
            id: (!self.last_event_id.is_empty()).then(|| self.last_event_id.clone()),
        }))
    }

    fn process_field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event_type = value.into_owned(),
            b"data" => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"id" if !value.contains('\0') => self.last_event_id = value.into_owned(),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {}
        }
    }
}

/// Forwards a stream event by event so chosen events can be withheld from the client.
///
/// Used only when the proxy changed the request in a way that adds an event the client did not ask
/// for (OpenAI's usage-only chunk after we set `stream_options.include_usage`). Bytes of an event are
/// held until its blank line, then released together; an event that grows past the cap is released
/// as it arrives instead (it cannot be the small event we withhold), so memory stays bounded.
#[derive(Debug)]
pub struct SseFrameFilter {
    parser: SseParser,
    max_event_bytes: usize,
    pending: Vec<u8>,
    passthrough: bool,
}

impl SseFrameFilter {
    pub fn new(max_event_bytes: usize) -> Self {
        SseFrameFilter {
            parser: SseParser::new(max_event_bytes),
            max_event_bytes,
            pending: Vec::new(),
            passthrough: false,
        }
    }

    /// Feeds a chunk. Returns the bytes to forward to the client now and the items parsed; an event
    /// for which `withhold` returns true is parsed (so it is metered) but its bytes are not forwarded.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut withhold: impl FnMut(&SseEvent) -> bool,
    ) -> (Vec<u8>, Vec<SseItem>) {
        let mut forward = Vec::with_capacity(chunk.len());
        let mut items = Vec::new();
        let mut frame_start = 0;
        let pending = &mut self.pending;
        let passthrough = &mut self.passthrough;
        self.parser.feed_with(chunk, |item, end| {
            let frame = &chunk[frame_start..end];
            frame_start = end;
            let drop_frame =
                matches!(&item, Some(SseItem::Event(event)) if !*passthrough && withhold(event));
            if drop_frame {
                pending.clear();
            } else {
                forward.append(pending);
                forward.extend_from_slice(frame);
            }
            *passthrough = false;
            items.extend(item);
        });
        let tail = &chunk[frame_start..];
        if self.passthrough {
            forward.extend_from_slice(tail);
        } else {
            self.pending.extend_from_slice(tail);
            if self.pending.len() > self.max_event_bytes {
                forward.append(&mut self.pending);
                self.passthrough = true;
            }
        }
        (forward, items)
    }

    /// Ends the stream: returns whatever is still held and the last items.
    pub fn finish(&mut self) -> (Vec<u8>, Vec<SseItem>) {
        let items = self.parser.finish();
        self.passthrough = false;
        (std::mem::take(&mut self.pending), items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(name: &str, data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            event: name.to_owned(),
            data: data.to_owned(),
            id: None,
        })
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut parser = SseParser::default();
        let mut items = Vec::new();
        for chunk in chunks {
            items.extend(parser.feed(chunk));
        }
        items.extend(parser.finish());
        items
    }

    #[test]
    fn parses_named_event_with_data() {
        let items = parse_all(&[b"event: message_start\ndata: {\"a\":1}\n\n"]);
        assert_eq!(items, vec![event("message_start", "{\"a\":1}")]);
    }

    #[test]
    fn joins_multiple_data_lines_with_newlines() {
        let items = parse_all(&[b"data: one\ndata: two\ndata:three\n\n"]);
        assert_eq!(items, vec![event("message", "one\ntwo\nthree")]);
    }

    #[test]
    fn accepts_crlf_and_cr_line_endings() {
        let crlf = parse_all(&[b"event: a\r\ndata: x\r\n\r\n"]);
        let cr = parse_all(&[b"event: a\rdata: x\r\r"]);
        assert_eq!(crlf, vec![event("a", "x")]);
        assert_eq!(cr, vec![event("a", "x")]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let items = parse_all(&[b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n"]);
        assert_eq!(items, vec![event("message", "x"), event("message", "y")]);
    }

    #[test]
    fn utf8_character_split_across_chunks_survives() {
        let bytes = "data: héllo €\n\n".as_bytes();
        let split = bytes.len() - 4; // inside the three-byte euro sign
        let items = parse_all(&[&bytes[..split], &bytes[split..]]);
        assert_eq!(items, vec![event("message", "héllo €")]);
    }

    #[test]
    fn field_name_split_across_chunks() {
        let items = parse_all(&[b"ev", b"ent: x\nda", b"ta: 1\n\n"]);
        assert_eq!(items, vec![event("x", "1")]);
    }

    #[test]
    fn ignores_comments() {
        let items = parse_all(&[b": keep-alive\n\n: ping\ndata: x\n\n"]);
        assert_eq!(items, vec![event("message", "x")]);
    }

    #[test]
    fn records_id_and_retry() {
        let mut parser = SseParser::default();
        let items = parser.feed(b"id: 7\nretry: 1500\ndata: x\n\ndata: y\n\n");
        let ids: Vec<_> = items
            .iter()
            .map(|item| match item {
                SseItem::Event(event) => event.id.clone(),
                SseItem::Dropped { .. } => None,
            })
            .collect();
        assert_eq!(ids, vec![Some("7".to_owned()), Some("7".to_owned())]);
        assert_eq!(parser.retry_ms(), Some(1500));
    }

    #[test]
    fn ignores_invalid_retry() {
        let mut parser = SseParser::default();
        parser.feed(b"retry: soon\ndata: x\n\n");
        assert_eq!(parser.retry_ms(), None);
    }

    #[test]
    fn skips_bom_at_start_even_when_split() {
        let items = parse_all(&[&[0xEF], &[0xBB, 0xBF], b"data: x\n\n"]);
        assert_eq!(items, vec![event("message", "x")]);
    }

    #[test]
    fn partial_bom_is_content() {
        // 0xEF then 'd': not a BOM, so the first line's field name is "\u{FFFD}data" and is ignored.
        let items = parse_all(&[&[0xEF], b"data: x\n\ndata: y\n\n"]);
        assert_eq!(items, vec![event("message", "y")]);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        let items = parse_all(&[b"event: ping\n\ndata: x\n\n"]);
        assert_eq!(items, vec![event("message", "x")]);
    }

    #[test]
    fn oversized_event_is_dropped_and_flagged_and_next_event_parses() {
        let mut parser = SseParser::new(16);
        let mut items = parser.feed(b"data: 0123456789");
        items.extend(parser.feed(b"0123456789\n"));
        assert!(parser.line.is_empty() && parser.data.is_empty());
        items.extend(parser.feed(b"data: more\n\ndata: ok\n\n"));
        assert_eq!(
            items,
            vec![SseItem::Dropped { bytes: 36 }, event("message", "ok")]
        );
    }

    #[test]
    fn finish_dispatches_an_unterminated_event() {
        let items = parse_all(&[b"data: {\"usage\":1}"]);
        assert_eq!(items, vec![event("message", "{\"usage\":1}")]);
    }

    #[test]
    fn filter_withholds_only_the_chosen_event() {
        let mut filter = SseFrameFilter::new(1024);
        let stream = b"data: a\n\n: ping\n\ndata: usage\n\ndata: [DONE]\n\n";
        let mut forwarded = Vec::new();
        for chunk in stream.chunks(3) {
            let (bytes, _) = filter.feed(chunk, |event| event.data == "usage");
            forwarded.extend(bytes);
        }
        forwarded.extend(filter.finish().0);
        assert_eq!(forwarded, b"data: a\n\n: ping\n\ndata: [DONE]\n\n".to_vec());
    }

    #[test]
    fn filter_passes_oversized_events_through() {
        let mut filter = SseFrameFilter::new(8);
        let stream = b"data: 0123456789abcdef\n\ndata: x\n\n";
        let mut forwarded = Vec::new();
        for chunk in stream.chunks(5) {
            forwarded.extend(filter.feed(chunk, |_| true).0);
        }
        forwarded.extend(filter.finish().0);
        assert_eq!(forwarded, b"data: 0123456789abcdef\n\n".to_vec());
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        let line_end = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        let field = prop_oneof![
            "[a-z{}\":, é€]{0,12}".prop_map(|v| format!("data: {v}")),
            "[a-z_]{1,8}".prop_map(|v| format!("event: {v}")),
            "[0-9]{1,3}".prop_map(|v| format!("id: {v}")),
            "[ -~]{0,8}".prop_map(|v| format!(":{v}")),
            Just(String::new()),
        ];
        prop::collection::vec((field, line_end), 0..40).prop_map(|lines| {
            let mut out = Vec::new();
            for (line, end) in lines {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(end.as_bytes());
            }
            out
        })
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_events(
            stream in arb_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let whole = parse_all(&[&stream]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for point in points {
                chunks.push(&stream[start..point]);
                start = point;
            }
            chunks.push(&stream[start..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }

        #[test]
        fn filter_that_withholds_nothing_forwards_the_stream_unchanged(
            stream in arb_stream(),
            size in 1usize..9,
            cap in 0usize..32,
        ) {
            let mut filter = SseFrameFilter::new(cap);
            let mut forwarded = Vec::new();
            for chunk in stream.chunks(size) {
                forwarded.extend(filter.feed(chunk, |_| false).0);
            }
            forwarded.extend(filter.finish().0);
            prop_assert_eq!(forwarded, stream);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            cap in 0usize..64,
        ) {
            let mut parser = SseParser::new(cap);
            for chunk in bytes.chunks(7) {
                parser.feed(chunk);
            }
            parser.finish();
        }
    }
}
