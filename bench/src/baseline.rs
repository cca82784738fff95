//! The ceiling of our own stack: a room broadcast server on
//! tokio-tungstenite with no actors and no storage. Frame bytes are shared
//! by every recipient, each connection has one writer task that feeds every
//! queued frame and then flushes once.
//!
//! Protocol: `{"type":"join","room":R}`, then `{"type":"pub","room":R,...}`
//! frames are sent as they are to every member of R, the sender included.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Utf8Bytes>>>>>;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    room: &'a str,
}

pub(crate) async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let rooms: Rooms = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut stream) = socket.split();
            let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(65536);
            let writer = tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    if sink.feed(Message::Text(frame)).await.is_err() {
                        return;
                    }
                    while let Ok(frame) = rx.try_recv() {
                        if sink.feed(Message::Text(frame)).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                    continue;
                };
                let mut rooms = rooms.lock().expect("rooms lock");
                match frame.kind {
                    "join" => rooms
                        .entry(frame.room.to_owned())
                        .or_default()
                        .push(tx.clone()),
                    "pub" => {
                        if let Some(members) = rooms.get_mut(frame.room) {
                            members.retain(|m| m.try_send(text.clone()).is_ok());
                        }
                    }
                    _ => {}
                }
            }
            drop(tx);
            writer.abort();
        });
    }
}
