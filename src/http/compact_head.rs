//! Copies each request's header values out of the connection's read buffer into one exact-size
//! buffer, so that a request head parked in actix's pools does not keep that buffer alive.
//!
//! actix parses header values as slices of the connection's 8 KiB read buffer, and when a request
//! ends it parks the head, values and all, in per-worker pools of up to 128 heads each
//! (actix-http's and actix-web's); the values are dropped only when a head is taken out again. So
//! after a burst of more than 128 concurrent requests each worker kept up to 256 read buffers of
//! connections long closed: 553 of them, 4.5 MB, on two workers after a burst of 640. Here the
//! values of a request, typically under 1 KiB in all, move to one buffer of their own: one
//! allocation and one copy per request. Responses are left alone: compacting them too was
//! measured to keep 0.1 MB less after the same burst, not worth a second copy on every call.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::BytesMut;

pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    compact(req.headers_mut());
    next.call(req).await
}

/// Points every value of `headers` at one new buffer holding copies of them all, in place (the
/// map keeps its allocation), in one pass: each value is appended to a buffer sized for all of
/// them and split off it, so the copies share that one allocation.
pub fn compact(headers: &mut HeaderMap) {
    let total: usize = headers.iter().map(|(_, v)| v.len()).sum();
    if total == 0 {
        return;
    }
    let mut buf = BytesMut::with_capacity(total);
    headers.retain(|_, v| {
        buf.extend_from_slice(v.as_bytes());
        if let Ok(mut fresh) = HeaderValue::from_maybe_shared(buf.split().freeze()) {
            fresh.set_sensitive(v.is_sensitive());
            *v = fresh;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, AUTHORIZATION, COOKIE};
    use actix_web::web::Bytes;

    fn parsed(buffer: &Bytes, value: &str) -> HeaderValue {
        let start = buffer
            .windows(value.len())
            .position(|w| w == value.as_bytes())
            .unwrap();
        HeaderValue::from_maybe_shared(buffer.slice(start..start + value.len())).unwrap()
    }

    #[test]
    fn values_stop_sharing_the_read_buffer_and_keep_their_bytes_order_and_flags() {
        // As actix parses them: values are slices of one big read buffer.
        let mut read = BytesMut::with_capacity(8192);
        read.extend_from_slice(
            b"authorization: Bearer kb_x\r\ncookie: a=1\r\ncookie: b=2\r\nx-one: 1\r\n",
        );
        let read = read.freeze();
        let mut headers = HeaderMap::new();
        let mut auth = parsed(&read, "Bearer kb_x");
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.append(COOKIE, parsed(&read, "a=1"));
        headers.append(COOKIE, parsed(&read, "b=2"));
        headers.insert(HeaderName::from_static("x-one"), parsed(&read, "1"));
        let read_at = read.as_ptr() as usize..read.as_ptr() as usize + read.len();

        compact(&mut headers);

        for (_, v) in headers.iter() {
            assert!(!read_at.contains(&(v.as_bytes().as_ptr() as usize)));
        }
        // The copies lie side by side in one buffer of exactly their total size.
        let starts = headers.iter().map(|(_, v)| v.as_bytes().as_ptr() as usize);
        let ends = headers
            .iter()
            .map(|(_, v)| v.as_bytes().as_ptr() as usize + v.len());
        let total: usize = headers.iter().map(|(_, v)| v.len()).sum();
        assert_eq!(ends.max().unwrap() - starts.min().unwrap(), total);
        assert_eq!(headers.get(AUTHORIZATION).unwrap(), "Bearer kb_x");
        assert!(headers.get(AUTHORIZATION).unwrap().is_sensitive());
        let cookies: Vec<_> = headers.get_all(COOKIE).collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(headers.get("x-one").unwrap(), "1");
        assert_eq!(headers.len(), 4);
        // Only the test's own handle is left on the read buffer: the map no longer holds it.
        assert!(read.is_unique());
    }

    #[test]
    fn an_empty_map_or_empty_values_are_left_as_they_are() {
        let mut headers = HeaderMap::new();
        compact(&mut headers);
        assert!(headers.is_empty());
        headers.insert(
            HeaderName::from_static("x-empty"),
            HeaderValue::from_static(""),
        );
        compact(&mut headers);
        assert_eq!(headers.get("x-empty").unwrap(), "");
    }
}
