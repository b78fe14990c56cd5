//! A request's extensions, carried over to its response.
//!
//! The layers above the client read, from the response, what was decided for the request
//! on its way down: the balancer's endpoint, the retry layer's try, the request's
//! [`crate::context::RequestContext`]. A response from hyper comes with an empty extension
//! map, and the first value put in one allocates the map, its table and the value. So the
//! client hands the request's own map (which has them all, and room) over to its response: a
//! move, no allocation. hyper does not need the map to write the request, and when it gives
//! an unwritten request back the map goes back onto it, for the retry layer to find.

use http::{Extensions, Request, Response};
use hyper::client::conn::TrySendError;

/// A send that failed: the error, and what came back.
pub(super) struct Unwritten<B> {
    pub(super) back: GivenBack<B>,
    pub(super) error: hyper::Error,
}

/// What a failed send leaves.
#[expect(
    clippy::large_enum_variant,
    reason = "the request as hyper gives it back, read at once on a rare path"
)]
pub(super) enum GivenBack<B> {
    /// The request, which hyper gave back unwritten, with its extensions on it again.
    Request(Request<B>),
    /// Only the request's extensions: hyper kept the request (it may have been written). They
    /// go onto a copy kept to send again, when there is one (a refused HTTP/2 stream).
    Extensions(Extensions),
}

/// The extensions taken off a request while hyper has it.
pub(super) struct CarriedExtensions(Extensions);

impl CarriedExtensions {
    /// Takes `req`'s extensions off it.
    pub(super) fn off<B>(req: &mut Request<B>) -> Self {
        Self(std::mem::take(req.extensions_mut()))
    }

    /// Puts the extensions back: onto the response, or onto the request hyper gave back.
    #[expect(
        clippy::result_large_err,
        reason = "as large as hyper's own error, which it replaces; rare, and read at once"
    )]
    pub(super) fn back<B, R>(
        self,
        sent: Result<Response<R>, TrySendError<Request<B>>>,
    ) -> Result<Response<R>, Unwritten<B>> {
        match sent {
            Ok(mut response) => {
                self.onto(response.extensions_mut());
                Ok(response)
            }
            Err(mut e) => {
                let back = match e.take_message() {
                    Some(mut req) => {
                        *req.extensions_mut() = self.0;
                        GivenBack::Request(req)
                    }
                    None => GivenBack::Extensions(self.0),
                };
                Err(Unwritten {
                    back,
                    error: e.into_error(),
                })
            }
        }
    }

    /// Onto `extensions` (a response's): what the response came with wins.
    fn onto(self, extensions: &mut Extensions) {
        let own = std::mem::replace(extensions, self.0);
        if !own.is_empty() {
            extensions.extend(own);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_gets_the_requests_extensions_and_keeps_its_own() {
        let mut req = Request::new(());
        req.extensions_mut().insert(1u8);
        req.extensions_mut().insert("request");
        let carried = CarriedExtensions::off(&mut req);
        assert!(req.extensions().is_empty());

        let mut response = Response::new(());
        response.extensions_mut().insert("response");
        let response = carried
            .back::<(), ()>(Ok(response))
            .unwrap_or_else(|_| panic!("sent"));
        assert_eq!(response.extensions().get::<u8>(), Some(&1));
        assert_eq!(response.extensions().get::<&str>(), Some(&"response"));
    }
}
