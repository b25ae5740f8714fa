//! The diag blobber: puts seeded blobs into the runtime's blob store and hashes what it
//! reads back (`tests/blobs.rs`, `bench/src/bin/blob.rs`).

use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::time::Instant;
use troupe_diag::{Blobber, BlobberMsg, BlobberReply, bytes_of};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf};

pub struct BlobberActor;

impl FromParams for BlobberActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(BlobberActor)
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn answer(node: &Node, msg: BlobberMsg) -> Result<BlobberReply, String> {
    let blobs = node.blobs().map_err(|e| e.to_string())?;
    Ok(match msg {
        BlobberMsg::Put { seed, len, holder } => {
            let bytes = tokio::task::spawn_blocking(move || bytes_of(seed, len)).await.map_err(|e| e.to_string())?;
            let sha = hex(&Sha256::digest(&bytes));
            let t = Instant::now();
            let blob = blobs.put(&bytes, &holder).await.map_err(|e| e.to_string())?;
            BlobberReply::Stored { blob, sha256: sha, micros: t.elapsed().as_micros() as u64 }
        }
        BlobberMsg::Digest { blob, via } => {
            let t = Instant::now();
            let mut h = Sha256::new();
            let mut len = 0u64;
            match via {
                None => {
                    let mut s = blobs.read(blob);
                    while let Some(piece) = s.next().await {
                        let piece = piece.map_err(|e| e.to_string())?;
                        len += piece.len() as u64;
                        h.update(&piece);
                    }
                }
                Some(node) => {
                    let mut s = blobs.read_via(&node, blob).await.map_err(|e| e.to_string())?;
                    while let Some(piece) = s.next().await {
                        let piece = piece.map_err(|e| e.to_string())?;
                        len += piece.len() as u64;
                        h.update(&piece);
                    }
                }
            }
            BlobberReply::Digest { sha256: hex(&h.finalize()), len, micros: t.elapsed().as_micros() as u64 }
        }
        BlobberMsg::Retain { blob, holder } => {
            blobs.retain(&blob, &holder).await.map_err(|e| e.to_string())?;
            BlobberReply::Done
        }
        BlobberMsg::Release { blob, holder } => {
            blobs.release(&blob, &holder).await.map_err(|e| e.to_string())?;
            BlobberReply::Done
        }
        BlobberMsg::Holders { blob } => {
            BlobberReply::Holders(blobs.holders_here(&blob).await.map(|h| h.into_iter().collect()))
        }
    })
}

impl Behavior for BlobberActor {
    type Proto = Blobber;
    type State = ();

    async fn init(&self, _: &Ctx<Blobber>) -> Result<(), ActorError> {
        Ok(())
    }

    async fn handle(
        &self,
        ctx: &Ctx<Blobber>,
        _: &mut (),
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        // Blob transfers take a while: answered on their own task, not this actor's turn.
        let node = ctx.node().clone();
        tokio::spawn(async move {
            let out = answer(&node, msg).await.unwrap_or_else(BlobberReply::Failed);
            reply.send(out).await;
        });
        Ok(())
    }
}
