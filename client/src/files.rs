//! How the client names a file to the server.
//!
//! The API has no "register file" call: a file gets its id when a maps
//! text naming it is imported (`Spawn { maps_text }`), keyed by device,
//! inode and path exactly as `/proc/PID/maps` shows them. So a file is
//! registered by spawning a throw-away process whose one maps line names
//! it, reading the id back from `Maps`, and exiting the process. `replay`,
//! `replay --check` of a recording and `load --trace` all do this, here.

use crate::connect::Client;
use tonic::Status;
use vmasim_proto::v1::{ExitRequest, MapsRequest, SpawnRequest};

/// The server's `file_id` of the file `dev inode path` (`dev` as maps
/// prints it, `major:minor` in hex); 0 if the server mapped no file.
pub async fn register_file(
    c: &mut Client,
    dev: &str,
    inode: u64,
    path: &str,
) -> Result<u64, Status> {
    let maps_text = format!("10000-11000 r--p 00000000 {dev} {inode} {path}\n");
    let pid = c
        .spawn(SpawnRequest {
            maps_text,
            start_brk: 0,
        })
        .await?
        .into_inner()
        .pid;
    let m = c.maps(MapsRequest { pid }).await?.into_inner();
    // The process was only a way to name the file.
    let _ = c.exit(ExitRequest { pid }).await;
    Ok(m.entries.first().map_or(0, |e| e.file_id))
}
