//! The spool service: watcher → queue → uploader → disposition.
