//! The user actor: owns one user's notification log and version counter,
//! and the user's index of conversations. It pushes each notification to
//! the user's devices, wherever they are connected.
//!
//! It stops after the idle period like every entity actor, whether or not a
//! device is connected: the devices are subscribed in the
//! [`crate::directory`], which conversations deliver through without it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tidings_protocol::frames::SyncedNotifications;
use tidings_protocol::{ConvId, Notification, ServerFrame, UserId};

use crate::budget::{page, Budget};
use crate::command::{Answer, UserCommand};
use crate::directory::Directory;
use crate::entity::{now_ms, storage_failed, EntityArgs, IdleClock};
use crate::messages::{EntityKey, RouterMsg, UserMsg};
use crate::metrics::Metrics;
use crate::shard::{shard_of, ShardId};
use crate::storage::records::{BlockList, IndexEntry, StoredNotification, UserMeta};
use crate::storage::{keys, Cf, CommitLog, Storage, WriteSet};

pub mod rules;

pub struct UserActor;

pub struct User {
    id: UserId,
    shard: ShardId,
    meta: UserMeta,
    directory: Directory,
    storage: Storage,
    log: Arc<dyn CommitLog>,
    router: ActorRef<RouterMsg>,
    metrics: Arc<Metrics>,
    idle: IdleClock,
}

use crate::error::{Error, Result};

impl Actor for UserActor {
    type Msg = UserMsg;
    type State = User;
    type Arguments = EntityArgs<UserId>;

    async fn pre_start(
        &self,
        myself: ActorRef<UserMsg>,
        args: EntityArgs<UserId>,
    ) -> std::result::Result<User, ActorProcessingErr> {
        let meta = args
            .storage
            .get(Cf::UserMeta, &keys::entity(args.id.as_str()))?
            .unwrap_or_default();
        let key = EntityKey::User(args.id.clone());
        let idle = IdleClock::new(key, myself.get_id(), args.config.idle_after);
        args.metrics.entity_started("user");
        Ok(User {
            shard: shard_of(args.id.as_str()),
            id: args.id,
            meta,
            directory: args.directory,
            storage: args.storage,
            log: args.log,
            router: args.router,
            metrics: args.metrics,
            idle,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<UserMsg>,
        state: &mut User,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.metrics.entity_gauge("user").dec();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<UserMsg>,
        message: UserMsg,
        state: &mut User,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match message {
            UserMsg::Tick => {
                state.idle.tick(&state.router, false);
                return Ok(());
            }
            UserMsg::Shutdown => {
                myself.stop(None);
                return Ok(());
            }
            _ => state.idle.handled(),
        }
        match message {
            UserMsg::Command(command, reply) => {
                // Boxed so that an idle user actor's task stays small.
                let _ = reply.send(Box::pin(state.run(command)).await);
            }
            UserMsg::Tick | UserMsg::Shutdown => unreachable!("handled above"),
        }
        Ok(())
    }
}

impl User {
    async fn run(&mut self, command: UserCommand) -> Result<Answer> {
        match command {
            UserCommand::Notify { payload } => self.notify(payload).await.map(Answer::Version),
            UserCommand::Notifications {
                after,
                limit,
                max_bytes,
            } => self
                .notifications(after, limit, max_bytes)
                .map(Answer::Notifications),
            UserCommand::Conversations => self.conversations().map(Answer::Convs),
            UserCommand::Index { conv, entry } => {
                self.index(conv, entry).await.map(|()| Answer::Done)
            }
            UserCommand::Block { user, block } => {
                self.block(user, block).await.map(|()| Answer::Done)
            }
            UserCommand::Blocks { user } => self
                .block_list()
                .map(|list| Answer::Flag(list.contains(&user))),
            UserCommand::BlockList => self.block_list().map(|list| Answer::Users(list.users)),
        }
    }

    /// Reads the user's meta again. In a cluster, another node may have
    /// led this user's shard since this actor loaded it.
    fn refresh(&mut self) -> Result<()> {
        self.meta = self
            .storage
            .get(Cf::UserMeta, &keys::entity(self.id.as_str()))
            .map_err(storage_failed)?
            .unwrap_or_default();
        Ok(())
    }

    async fn notify(&mut self, payload: serde_json::Value) -> Result<u64> {
        self.refresh()?;
        let (version, meta) = rules::next_notification(&self.meta);
        let ts = now_ms();
        let record = StoredNotification {
            ts,
            payload: payload.to_string(),
        };
        let user = self.id.as_str();
        let mut writes = WriteSet::default();
        writes
            .put(Cf::UserLog, keys::versioned(user, version), &record)
            .map_err(storage_failed)?;
        writes
            .put(Cf::UserMeta, keys::entity(user), &meta)
            .map_err(storage_failed)?;
        writes.expect(Cf::UserLog, user, version - 1, version);
        self.log
            .append(self.shard, writes)
            .await
            .map_err(crate::entity::commit_failed)?;
        self.meta = meta;
        self.metrics.notifications_committed.inc();
        let frame = ServerFrame::Notification(Notification {
            version,
            ts,
            payload,
        })
        .push()
        .to_json();
        // Through the directory: in a cluster the user's devices on other
        // nodes get it too.
        self.directory.deliver(
            std::slice::from_ref(&self.id),
            None,
            &frame.into(),
            &self.metrics,
        );
        Ok(version)
    }

    fn notifications(
        &mut self,
        after: Option<u64>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<SyncedNotifications> {
        self.refresh()?;
        let user = self.id.as_str();
        let version = self.meta.notification_version;
        let stored: Vec<(u64, StoredNotification)> = self
            .storage
            .log_range(
                Cf::UserLog,
                user,
                after.unwrap_or(0),
                u64::MAX,
                limit as usize,
                after.is_none(),
            )
            .map_err(storage_failed)?;
        let mut events: Vec<Notification> = stored
            .into_iter()
            .map(|(version, n)| Notification {
                version,
                ts: n.ts,
                payload: serde_json::from_str(&n.payload).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        let more = page(
            &mut events,
            after,
            version,
            |n| n.version,
            &mut Budget::new(max_bytes),
        );
        Ok(SyncedNotifications {
            version,
            events,
            more,
        })
    }

    /// The conversations this user is a member of, from the user's index.
    fn conversations(&self) -> Result<Vec<ConvId>> {
        let entries = self
            .storage
            .named::<IndexEntry>(Cf::UserConvs, self.id.as_str())
            .map_err(storage_failed)?;
        Ok(entries
            .into_iter()
            // An entry from before entries had versions means "member".
            .filter(|(_, entry)| rules::listed(*entry))
            .filter_map(|(name, _)| ConvId::try_from(name).ok())
            .collect())
    }

    /// Records a conversation's membership change in this user's index,
    /// unless the index already holds a later one. Read from storage, not
    /// from this actor: it may have been loaded while another node led the
    /// shard.
    async fn index(&mut self, conv: ConvId, entry: IndexEntry) -> Result<()> {
        let key = keys::named(self.id.as_str(), conv.as_str());
        let current = self
            .storage
            .get_raw(Cf::UserConvs, &key)
            .map_err(storage_failed)?
            .and_then(|bytes| crate::codec::decode::<IndexEntry>(&bytes).ok());
        // A legacy entry (no version) reads as none and is replaced.
        if !rules::index_changes(current, entry) {
            return Ok(());
        }
        let mut writes = WriteSet::default();
        writes
            .put(Cf::UserConvs, key, &entry)
            .map_err(storage_failed)?;
        self.log
            .append(self.shard, writes)
            .await
            .map_err(crate::entity::commit_failed)
    }

    /// The users this user has blocked. Read from storage, like the index:
    /// another node may have led the shard since this actor started.
    fn block_list(&self) -> Result<BlockList> {
        Ok(self
            .storage
            .get(Cf::UserMeta, &keys::block_list(self.id.as_str()))
            .map_err(storage_failed)?
            .unwrap_or_default())
    }

    /// Blocks or unblocks `user`, durably in this user's shard; a change
    /// that changes nothing writes nothing.
    async fn block(&mut self, user: UserId, block: bool) -> Result<()> {
        let list = rules::block(self.block_list()?, &self.id, user.clone(), block)
            .map_err(|err| Error::BadRequest(err.to_string()))?;
        let Some(list) = list else {
            return Ok(());
        };
        let mut writes = WriteSet::default();
        writes
            .put(Cf::UserMeta, keys::block_list(self.id.as_str()), &list)
            .map_err(storage_failed)?;
        self.log
            .append(self.shard, writes)
            .await
            .map_err(crate::entity::commit_failed)?;
        tracing::debug!(user = %self.id, other = %user, block, "block list changed");
        Ok(())
    }
}
