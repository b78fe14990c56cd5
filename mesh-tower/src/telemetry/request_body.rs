//! The request body as telemetry passes it on: counted when its length is not known up front.

use super::Observation;
use super::grpc_messages::SharedCount;
use super::size::BodyBytes;
use crate::body::{BoxBody, BoxError};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A request body after [`Observation::request_body`]: the body the service behind
    /// [`super::TelemetryLayer`] (or the embedding API's inbound layer) receives.
    ///
    /// A body of known length (an exact `size_hint`: a `Content-Length`, a buffered body, none
    /// at all) is counted by that length and its frames pass through untouched. Any other
    /// (HTTP/1.1 chunked, an HTTP/2 stream without `Content-Length`: gRPC streaming, uploads)
    /// counts its data frames as they go through, into a counter the [`Observation`] reads
    /// when the response ends: the bytes the service read by then. Every other behaviour
    /// (`is_end_stream`, `size_hint`, errors, trailers) is the inner body's.
    ///
    /// ```
    /// use http::{Request, Response};
    /// use mesh_tower::body::{self, BoxBody};
    /// use mesh_tower::telemetry::{Reporter, RequestBody, Telemetry, TelemetryLayer};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // The app behind the layer reads its request body as any other.
    /// let app = tower::service_fn(|req: Request<RequestBody<BoxBody>>| async move {
    ///     let length = http_body::Body::size_hint(req.body()).exact();
    ///     Ok::<_, std::convert::Infallible>(Response::new(body::full(format!("{length:?}"))))
    /// });
    /// let telemetry = Telemetry::new(Reporter::Destination, Default::default());
    /// let service = TelemetryLayer::new(telemetry).layer(app);
    /// let response = service.oneshot(Request::new(body::full("hello"))).await.unwrap();
    /// # let _ = response;
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        pub(super) counter: Option<Arc<AtomicU64>>,
        // A gRPC request's messages, for `istio_request_messages_total`.
        messages: Option<SharedCount>,
    }
}

impl<B> RequestBody<B> {
    /// `inner`, passed on without counting (a stack without telemetry; a test of a service
    /// that sits behind one).
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            counter: None,
            messages: None,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably (bytes taken from it directly are not counted).
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The inner body (bytes read from it after this are not counted).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            if let Some(counter) = this.counter.as_ref() {
                counter.fetch_add(data.remaining() as u64, Ordering::Relaxed);
            }
            if let Some(messages) = this.messages.as_mut() {
                messages.feed(data);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Observation {
    /// Hands the request's body to the observation, which counts its bytes for
    /// `istio_request_bytes` and the access log's `bytes_received` (until then, the
    /// request's `Content-Length` stands in). A body of known length is counted by its
    /// length; one of unknown length as it streams (see [`RequestBody`]).
    pub fn request_body<B: Body>(&mut self, body: B) -> RequestBody<B> {
        RequestBody {
            counter: self.count_request_body(&body),
            messages: self.count_request_messages(),
            inner: body,
        }
    }

    /// As [`Observation::request_body`], boxed for a stack as [`crate::body::boxed_request`]
    /// boxes it: a body that has ended (a GET's) becomes an empty one, and a body of known
    /// length is boxed as it is, with no wrapper around it.
    pub(crate) fn boxed_request_body<B>(&mut self, body: B) -> BoxBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            self.request_bytes.set_body(BodyBytes::Known(0));
            return crate::body::empty();
        }
        let counter = self.count_request_body(&body);
        let messages = self.count_request_messages();
        if counter.is_none() && messages.is_none() {
            return crate::body::boxed(body);
        }
        crate::body::boxed(RequestBody {
            inner: body,
            counter,
            messages,
        })
    }

    /// For a gRPC request, the count of its messages (read back when the response ends).
    fn count_request_messages(&mut self) -> Option<SharedCount> {
        self.grpc.then(|| {
            let (count, published) = SharedCount::new();
            self.request_messages = Some(published);
            count
        })
    }

    /// Records `body`'s length when it is known; else the counter to count it in.
    fn count_request_body<B: Body>(&mut self, body: &B) -> Option<Arc<AtomicU64>> {
        match body.size_hint().exact() {
            Some(len) => {
                self.request_bytes.set_body(BodyBytes::Known(len));
                None
            }
            None => {
                let counter = Arc::new(AtomicU64::new(0));
                self.request_bytes
                    .set_body(BodyBytes::Counted(counter.clone()));
                Some(counter)
            }
        }
    }
}
