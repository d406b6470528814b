//! [`AppendFuture`]: an append that never blocks its thread.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::Appended;
use super::Inner;
use super::group_commit::durable_outcome;
use super::lock_err;
use crate::error::Result;
use crate::format::Payload;

/// The future of [`Wal::append_async`](super::Wal::append_async).
pub struct AppendFuture<'a, P> {
    pub(super) inner: &'a Inner,
    pub(super) records: &'a [P],
    pub(super) frame_len: Option<usize>,
    pub(super) placed: Option<(u64, Appended)>,
}

impl<P: Payload> Future for AppendFuture<'_, P> {
    type Output = Result<Appended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = this.inner;
        let frame_len = match this.frame_len {
            Some(len) => len,
            None => match inner.check(this.records) {
                Ok(len) => *this.frame_len.insert(len),
                Err(e) => return Poll::Ready(Err(e)),
            },
        };
        let mut st = match inner.state.lock() {
            Ok(st) => st,
            Err(e) => return Poll::Ready(Err(lock_err(e))),
        };
        let (id, appended) = match this.placed {
            Some(placed) => placed,
            None => match inner.try_place(&mut st, this.records, frame_len) {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(Some(placed)) => {
                    this.placed = Some(placed);
                    if !st.writing {
                        inner.work.notify_one();
                    }
                    placed
                }
                Ok(None) => {
                    register(&mut st.space_wakers, cx.waker());
                    return Poll::Pending;
                }
            },
        };
        if let Some(result) = durable_outcome(&st, id) {
            return Poll::Ready(result.map(|()| appended));
        }
        match st
            .durable_wakers
            .iter_mut()
            .find(|(_, w)| w.will_wake(cx.waker()))
        {
            Some(slot) => slot.0 = slot.0.min(id),
            None => st.durable_wakers.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

fn register(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}
