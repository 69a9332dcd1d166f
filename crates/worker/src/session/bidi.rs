//! Bidirectional calls that open by sending.
//!
//! A gRPC server need not send its response headers before its first reply, and
//! grpc-python (Quay's manager) sends them only with it — which it sends only after the
//! first request arrived. So a stream is opened with its first request already in the
//! request stream, and the call (which resolves when the headers come) is awaited only as
//! part of awaiting the first answer: nothing waits for headers before sending.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

/// The requests of a stream: the first, then what is sent on its [`mpsc::Sender`].
pub(super) type Requests<T> =
    tokio_stream::adapters::Chain<tokio_stream::Once<T>, ReceiverStream<T>>;

type Call<T> = Pin<Box<dyn Future<Output = Result<Response<Streaming<T>>, Status>> + Send>>;

/// The answers of a stream opened by [`open`].
pub(super) struct Answers<T> {
    state: State<T>,
}

enum State<T> {
    /// The call was made; the server's response headers have not come yet.
    Calling(Call<T>),
    Open(Box<Streaming<T>>),
}

/// Opens a bidirectional stream whose first request is `first`: `call` makes the call
/// with the request stream it is given. Returns where further requests go (up to `window`
/// of them may wait to be sent) and where the answers come from.
pub(super) fn open<Req, Resp, F, Fut>(
    first: Req,
    window: usize,
    call: F,
) -> (mpsc::Sender<Req>, Answers<Resp>)
where
    F: FnOnce(Requests<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Streaming<Resp>>, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(window.max(1));
    let requests = tokio_stream::once(first).chain(ReceiverStream::new(rx));
    let answers = Answers {
        state: State::Calling(Box::pin(call(requests))),
    };
    (tx, answers)
}

impl<T> Answers<T> {
    /// The next answer; `None` when the server ended the stream.
    pub(super) async fn next(&mut self) -> Result<Option<T>, Status> {
        loop {
            match &mut self.state {
                State::Open(answers) => return answers.message().await,
                State::Calling(call) => {
                    let answers = call.await?.into_inner();
                    self.state = State::Open(Box::new(answers));
                }
            }
        }
    }

    /// True once the server's response headers came (the server took the call).
    pub(super) fn opened(&self) -> bool {
        matches!(self.state, State::Open(_))
    }
}
