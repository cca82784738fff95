//! The operations a user or a backend can ask for, on top of the router.
//!
//! WebSocket connections and HTTP handlers both call these, so the two
//! front ends behave the same. Every failure comes back as a client-safe
//! [`ErrorFrame`].

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use rand::distr::{Alphanumeric, SampleString};
use tidings_protocol::frames::{
    validate_limit, validate_members, validate_title, ConvSummary, PresenceInfo, SyncedConv,
    SyncedNotifications,
};
use tidings_protocol::{
    ClientFrame, Cmid, ConvId, ErrorCode, ErrorFrame, ServerFrame, UserId, DEFAULT_HISTORY_LIMIT,
    DEFAULT_SYNC_LIMIT,
};

use crate::messages::{Ack, ConvMsg, Created, HistoryPage, Page, Reply, RouterMsg, UserMsg};
use crate::outbound::Outbound;

type Result<T> = std::result::Result<T, ErrorFrame>;

/// A handle on the node's router; cheap to clone.
#[derive(Clone)]
pub struct Service {
    router: ActorRef<RouterMsg>,
    timeout: Duration,
}

fn unavailable(message: &str) -> ErrorFrame {
    ErrorFrame::new(ErrorCode::Unavailable, message)
}

impl Service {
    pub fn new(router: ActorRef<RouterMsg>, timeout: Duration) -> Service {
        Service { router, timeout }
    }

    async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> RouterMsg,
    ) -> Result<T> {
        match self.router.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(value)) => Ok(value),
            Ok(CallResult::Timeout) => Err(unavailable("the request timed out; retry")),
            Ok(CallResult::SenderError) | Err(_) => {
                Err(unavailable("the request could not be served; retry"))
            }
        }
    }

    async fn conv<T: Send + 'static>(
        &self,
        conv: &ConvId,
        build: impl FnOnce(Reply<T>) -> ConvMsg,
    ) -> Result<T> {
        self.call(|reply| RouterMsg::Conv(conv.clone(), build(reply)))
            .await?
    }

    async fn user<T: Send + 'static>(
        &self,
        user: &UserId,
        build: impl FnOnce(Reply<T>) -> UserMsg,
    ) -> Result<T> {
        self.call(|reply| RouterMsg::User(user.clone(), build(reply)))
            .await?
    }

    /// A new group conversation with `by` and `members`.
    pub async fn create(
        &self,
        by: &UserId,
        members: Vec<UserId>,
        title: Option<String>,
    ) -> Result<Created> {
        validate_members(&members)?;
        validate_title(title.as_deref())?;
        let suffix = Alphanumeric.sample_string(&mut rand::rng(), 20);
        let conv = ConvId::group(&suffix)
            .map_err(|e| ErrorFrame::new(ErrorCode::Internal, e.to_string()))?;
        self.conv(&conv, |reply| ConvMsg::Create {
            by: by.clone(),
            members,
            title,
            reply,
        })
        .await
    }

    /// The direct conversation of `by` and `other`, created on first use.
    pub async fn dm(&self, by: &UserId, other: &UserId) -> Result<Created> {
        let conv = ConvId::direct(by, other);
        self.conv(&conv, |reply| ConvMsg::OpenDirect {
            by: by.clone(),
            reply,
        })
        .await
    }

    pub async fn send(
        &self,
        by: &UserId,
        conv: &ConvId,
        body: String,
        cmid: Option<Cmid>,
        expect: Option<u64>,
    ) -> Result<Ack> {
        tidings_protocol::frames::validate_body(&body)?;
        self.conv(conv, |reply| ConvMsg::Send {
            by: by.clone(),
            body,
            cmid,
            expect,
            reply,
        })
        .await
    }

    pub async fn edit(
        &self,
        by: &UserId,
        conv: &ConvId,
        target: u64,
        rev: u32,
        body: String,
    ) -> Result<Ack> {
        tidings_protocol::frames::validate_body(&body)?;
        self.conv(conv, |reply| ConvMsg::Edit {
            by: by.clone(),
            target,
            rev,
            body,
            reply,
        })
        .await
    }

    pub async fn delete(&self, by: &UserId, conv: &ConvId, target: u64, rev: u32) -> Result<Ack> {
        self.conv(conv, |reply| ConvMsg::Delete {
            by: by.clone(),
            target,
            rev,
            reply,
        })
        .await
    }

    pub async fn members(
        &self,
        by: &UserId,
        conv: &ConvId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<Ack> {
        validate_members(&add)?;
        validate_members(&remove)?;
        self.conv(conv, |reply| ConvMsg::Members {
            by: by.clone(),
            add,
            remove,
            reply,
        })
        .await
    }

    pub async fn history(
        &self,
        by: &UserId,
        conv: &ConvId,
        after: Option<u64>,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage> {
        let limit = validate_limit(limit, DEFAULT_HISTORY_LIMIT)?;
        let page = Page {
            after,
            before,
            limit,
        };
        self.conv(conv, |reply| ConvMsg::History {
            by: by.clone(),
            page,
            reply,
        })
        .await
    }

    /// The conversations `by` belongs to.
    pub async fn conversations(&self, by: &UserId) -> Result<Vec<ConvSummary>> {
        let ids = self
            .user(by, |reply| UserMsg::Conversations { reply })
            .await?;
        let summaries = join_all(ids.iter().map(|conv| {
            self.conv(conv, |reply| ConvMsg::Summary {
                by: by.clone(),
                reply,
            })
        }))
        .await;
        // A conversation left between the two reads is simply not listed.
        Ok(summaries.into_iter().filter_map(Result::ok).collect())
    }

    /// What `by` missed: events of every conversation after the versions
    /// given (the latest `limit` of those not named), and notifications.
    pub async fn sync(
        &self,
        by: &UserId,
        seen: BTreeMap<ConvId, u64>,
        notifications: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(Vec<SyncedConv>, SyncedNotifications)> {
        let limit = validate_limit(limit, DEFAULT_SYNC_LIMIT)?;
        let ids = self
            .user(by, |reply| UserMsg::Conversations { reply })
            .await?;
        let pages = join_all(ids.iter().map(|conv| {
            let after = seen.get(conv).copied();
            self.conv(conv, move |reply| ConvMsg::Catchup {
                by: by.clone(),
                after,
                limit,
                reply,
            })
        }))
        .await;
        let mut convs = Vec::with_capacity(pages.len());
        for page in pages {
            match page {
                Ok(page) => convs.push(page),
                Err(err) if err.code == ErrorCode::Forbidden => {}
                Err(err) => return Err(err),
            }
        }
        let notifications = self.notifications(by, notifications, Some(limit)).await?;
        Ok((convs, notifications))
    }

    pub async fn notifications(
        &self,
        user: &UserId,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<SyncedNotifications> {
        let limit = validate_limit(limit, DEFAULT_SYNC_LIMIT)?;
        self.user(user, |reply| UserMsg::Notifications {
            after,
            limit,
            reply,
        })
        .await
    }

    /// A backend's notification for `user`; returns its version.
    pub async fn notify(&self, user: &UserId, payload: serde_json::Value) -> Result<u64> {
        let size = payload.to_string().len();
        if size > tidings_protocol::MAX_PAYLOAD_BYTES {
            return Err(ErrorFrame::new(
                ErrorCode::TooLarge,
                format!(
                    "payload is {size} bytes; the limit is {} bytes",
                    tidings_protocol::MAX_PAYLOAD_BYTES
                ),
            ));
        }
        self.user(user, |reply| UserMsg::Notify { payload, reply })
            .await
    }

    pub async fn presence(&self, users: &[UserId]) -> Result<BTreeMap<UserId, PresenceInfo>> {
        if users.len() > tidings_protocol::MAX_PRESENCE_USERS {
            return Err(ErrorFrame::bad_request(format!(
                "presence takes at most {} users",
                tidings_protocol::MAX_PRESENCE_USERS
            )));
        }
        let infos = join_all(users.iter().map(|user| {
            self.call(|reply| RouterMsg::Presence {
                user: user.clone(),
                reply,
            })
        }))
        .await;
        users
            .iter()
            .cloned()
            .zip(infos)
            .map(|(user, info)| info.map(|info| (user, info)))
            .collect()
    }

    pub fn typing(&self, by: &UserId, conv: &ConvId) {
        let _ = self.router.cast(RouterMsg::Conv(
            conv.clone(),
            ConvMsg::Typing { by: by.clone() },
        ));
    }

    /// Starts fanning `user`'s events out to `outbound`. Returns once the
    /// subscription is in place: whatever commits after that is pushed.
    pub async fn subscribe(&self, user: &UserId, outbound: Outbound) -> Result<()> {
        self.call(|reply| RouterMsg::User(user.clone(), UserMsg::Subscribe { outbound, reply }))
            .await
    }

    pub fn unsubscribe(&self, user: &UserId, id: u64) {
        let _ = self
            .router
            .cast(RouterMsg::User(user.clone(), UserMsg::Unsubscribe { id }));
    }

    /// Serves one client frame from a connection of `by`: the reply frame,
    /// or `None` for frames that get no reply.
    pub async fn handle(&self, by: &UserId, frame: ClientFrame) -> Result<Option<ServerFrame>> {
        let reply = match frame {
            ClientFrame::Ping => ServerFrame::Pong,
            ClientFrame::Create { members, title } => {
                let created = self.create(by, members, title).await?;
                created_frame(created)
            }
            ClientFrame::Dm { user } => created_frame(self.dm(by, &user).await?),
            ClientFrame::Send {
                conv,
                body,
                cmid,
                expect,
            } => ack_frame(self.send(by, &conv, body, cmid, expect).await?),
            ClientFrame::Edit {
                conv,
                target,
                rev,
                body,
            } => ack_frame(self.edit(by, &conv, target, rev, body).await?),
            ClientFrame::Delete { conv, target, rev } => {
                ack_frame(self.delete(by, &conv, target, rev).await?)
            }
            ClientFrame::History {
                conv,
                after,
                before,
                limit,
            } => {
                let page = self.history(by, &conv, after, before, limit).await?;
                ServerFrame::History {
                    conv: page.conv,
                    version: page.version,
                    events: page.events,
                }
            }
            ClientFrame::Sync {
                convs,
                notifications,
                limit,
            } => {
                let (convs, notifications) = self
                    .sync(by, convs.unwrap_or_default(), notifications, limit)
                    .await?;
                ServerFrame::Synced {
                    convs,
                    notifications,
                }
            }
            ClientFrame::Convs => ServerFrame::Convs {
                conversations: self.conversations(by).await?,
            },
            ClientFrame::Members { conv, add, remove } => ack_frame(
                self.members(
                    by,
                    &conv,
                    add.unwrap_or_default(),
                    remove.unwrap_or_default(),
                )
                .await?,
            ),
            ClientFrame::Presence { users } => ServerFrame::Presence {
                users: self.presence(&users).await?,
            },
            ClientFrame::Typing { conv } => {
                self.typing(by, &conv);
                return Ok(None);
            }
        };
        Ok(Some(reply))
    }
}

fn created_frame(created: Created) -> ServerFrame {
    ServerFrame::Created {
        conv: created.conv,
        version: created.version,
    }
}

fn ack_frame(ack: Ack) -> ServerFrame {
    ServerFrame::Ack {
        conv: ack.conv,
        version: ack.version,
        ts: ack.ts,
        dup: ack.dup,
    }
}
