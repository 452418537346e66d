//! Report files (`load -o`, `load --html`, `bench -o`), opened before the
//! work starts.
//!
//! A run can take minutes; a typo in `-o` must not cost them. So the file
//! is opened for writing — created if missing, its content left alone if
//! not — before the first call, and any error is reported then. The report
//! replaces the content at the end. A file this run created and never
//! filled (the run failed) is removed again, so a failed run leaves no
//! empty report behind; an existing file keeps its old content.

use crate::error::CliError;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An output file, open and writable, not yet written.
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    /// The option that named it, for messages (`--output`).
    flag: &'static str,
    file: Option<File>,
    /// This run created it (removed again if never written).
    created: bool,
}

impl OutputFile {
    /// Opens `path` for writing now; fails if it cannot be written.
    pub fn open(path: &Path, flag: &'static str) -> Result<Self, CliError> {
        let fail = |e: std::io::Error| {
            CliError::Other(format!("{flag} {}: cannot write: {e}", path.display()))
        };
        if path.is_dir() {
            return Err(CliError::Other(format!(
                "{flag} {}: is a directory",
                path.display()
            )));
        }
        let created = !path.exists();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(fail)?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            flag,
            file: Some(file),
            created,
        })
    }

    /// Replaces the file's content with `body`.
    pub fn write(mut self, body: &[u8]) -> Result<(), CliError> {
        let mut f = self.file.take().expect("written once");
        let r = f
            .set_len(0)
            .and_then(|()| f.write_all(body))
            .and_then(|()| f.flush());
        self.created = false;
        r.map_err(|e| {
            CliError::Other(format!(
                "{} {}: cannot write: {e}",
                self.flag,
                self.path.display()
            ))
        })
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.created && self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_paths_fail_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("r.json");
        let e = OutputFile::open(&missing, "--output").unwrap_err();
        assert!(e.to_string().starts_with("--output "), "{e}");
        let e = OutputFile::open(dir.path(), "--html").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn a_created_file_is_removed_unless_written_and_old_content_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        drop(OutputFile::open(&p, "--output").unwrap());
        assert!(!p.exists(), "an unwritten new file is removed");
        OutputFile::open(&p, "--output")
            .unwrap()
            .write(b"new report")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new report");
        drop(OutputFile::open(&p, "--output").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new report");
        OutputFile::open(&p, "--output")
            .unwrap()
            .write(b"short")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "short");
    }
}
