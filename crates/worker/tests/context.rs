//! Build-context tests: formats detected by content, hostile archives refused without a
//! trace outside the destination, limits, Quay's path rules, http and git sources, and the
//! fuzz corpus replayed through `unpack`.

/// Everything lives in `context::` so that `cargo test -p buildman-worker context` selects
/// these tests along with the unit tests of `context::*`.
mod context {
    use std::collections::BTreeSet;
    use std::io::{Cursor, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use buildman_worker::context::{ContextError, Limits, Source, prepare, unpack};
    use tar::{EntryType, Header};

    // ---------------------------------------------------------------------------------------
    // Archive builders

    /// One tar entry; the name and link name are written into the header raw, so `..` and
    /// absolute names (which `tar::Builder` refuses) get through.
    struct Entry {
        name: Vec<u8>,
        kind: EntryType,
        link: Vec<u8>,
        data: Vec<u8>,
        mode: u32,
    }

    fn file(name: &str, data: &[u8]) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: EntryType::Regular,
            link: Vec::new(),
            data: data.to_vec(),
            mode: 0o644,
        }
    }

    fn exe(name: &str, data: &[u8], mode: u32) -> Entry {
        Entry {
            mode,
            ..file(name, data)
        }
    }

    fn dir(name: &str) -> Entry {
        Entry {
            kind: EntryType::Directory,
            mode: 0o755,
            ..file(name, b"")
        }
    }

    fn symlink(name: &str, target: &str) -> Entry {
        Entry {
            kind: EntryType::Symlink,
            link: target.as_bytes().to_vec(),
            mode: 0o777,
            ..file(name, b"")
        }
    }

    fn hardlink(name: &str, target: &str) -> Entry {
        Entry {
            kind: EntryType::Link,
            link: target.as_bytes().to_vec(),
            ..file(name, b"")
        }
    }

    fn special(name: &str, kind: EntryType) -> Entry {
        Entry {
            kind,
            ..file(name, b"")
        }
    }

    fn tar_of(entries: &[Entry]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut header = Header::new_gnu();
            {
                let old = header.as_old_mut();
                assert!(e.name.len() <= old.name.len() && e.link.len() <= old.linkname.len());
                old.name[..e.name.len()].copy_from_slice(&e.name);
                old.linkname[..e.link.len()].copy_from_slice(&e.link);
            }
            header.set_entry_type(e.kind);
            header.set_size(e.data.len() as u64);
            header.set_mode(e.mode);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder.append(&header, e.data.as_slice()).expect("append");
        }
        builder.into_inner().expect("finish tar")
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        enc.write_all(data).expect("bzip2");
        enc.finish().expect("bzip2")
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1))
            .expect("xz");
        enc.write_all(data).expect("xz");
        enc.finish().expect("xz")
    }

    /// Zip entries: (name, contents, unix mode, symlink?).
    fn zip_of(entries: &[(&str, &[u8], u32, bool)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for &(name, data, mode, is_link) in entries {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode);
            if is_link {
                w.add_symlink(name, String::from_utf8_lossy(data), options)
                    .expect("zip symlink");
            } else if name.ends_with('/') {
                w.add_directory(name, options).expect("zip dir");
            } else {
                w.start_file(name, options).expect("zip file");
                w.write_all(data).expect("zip write");
            }
        }
        w.finish().expect("zip finish").into_inner()
    }

    fn sample_tree() -> Vec<Entry> {
        vec![
            dir("sub/"),
            file("Dockerfile", b"FROM scratch\nCOPY sub /sub\n"),
            exe("sub/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
            symlink("sub/link", "run.sh"),
        ]
    }

    // ---------------------------------------------------------------------------------------
    // The sandbox: a destination with a canary and an `outside` directory next to it

    struct Sandbox {
        tmp: tempfile::TempDir,
    }

    const CANARY: &[u8] = b"canary: must never change\n";

    impl Sandbox {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            std::fs::write(tmp.path().join("canary"), CANARY).expect("canary");
            std::fs::create_dir(tmp.path().join("outside")).expect("outside");
            Self { tmp }
        }

        fn dest(&self) -> PathBuf {
            self.tmp.path().join("dest")
        }

        fn outside(&self) -> PathBuf {
            self.tmp.path().join("outside")
        }

        /// Unpacks `data` into `dest` with `limits`, then checks nothing escaped.
        fn unpack_with(&self, data: &[u8], limits: &Limits) -> Result<(), ContextError> {
            let result = unpack(Cursor::new(data), &self.dest(), limits);
            self.assert_untouched();
            result
        }

        fn unpack(&self, data: &[u8]) -> Result<(), ContextError> {
            self.unpack_with(data, &Limits::default())
        }

        /// Nothing new next to `dest`, `outside` still empty, the canary unchanged.
        fn assert_untouched(&self) {
            let names: BTreeSet<String> = std::fs::read_dir(self.tmp.path())
                .expect("list tmp")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n != "dest")
                .collect();
            assert_eq!(
                names,
                BTreeSet::from(["canary".to_owned(), "outside".to_owned()]),
                "something was written next to dest"
            );
            let outside: Vec<_> = std::fs::read_dir(self.outside())
                .expect("list outside")
                .collect();
            assert!(outside.is_empty(), "something was written to outside/");
            let canary_meta =
                std::fs::symlink_metadata(self.tmp.path().join("canary")).expect("canary");
            assert!(canary_meta.is_file(), "canary replaced");
            assert_eq!(
                std::fs::read(self.tmp.path().join("canary")).expect("read canary"),
                CANARY
            );
        }

        fn read(&self, rel: &str) -> Vec<u8> {
            std::fs::read(self.dest().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
        }

        fn mode(&self, rel: &str) -> u32 {
            std::fs::metadata(self.dest().join(rel))
                .expect("metadata")
                .permissions()
                .mode()
                & 0o7777
        }
    }

    fn assert_hostile(result: Result<(), ContextError>, needle: &str) {
        match result {
            Err(ContextError::Hostile(msg)) => {
                assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
                assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
            }
            other => panic!("expected a Hostile error mentioning {needle:?}, got {other:?}"),
        }
    }

    fn assert_sample_unpacked(sb: &Sandbox) {
        assert_eq!(sb.read("Dockerfile"), b"FROM scratch\nCOPY sub /sub\n");
        assert_eq!(sb.read("sub/run.sh"), b"#!/bin/sh\necho hi\n");
        assert_eq!(sb.mode("sub/run.sh") & 0o111, 0o111, "executable bit kept");
        assert_eq!(
            std::fs::read_link(sb.dest().join("sub/link")).expect("link"),
            Path::new("run.sh")
        );
    }

    // ---------------------------------------------------------------------------------------
    // Formats, detected by content (the names in comments are what a server might call them)

    #[test]
    fn plain_tar_is_unpacked() {
        // Served as "context.zip".
        let sb = Sandbox::new();
        sb.unpack(&tar_of(&sample_tree())).expect("unpack");
        assert_sample_unpacked(&sb);
    }

    #[test]
    fn tar_gz_is_unpacked() {
        // Served as "Dockerfile".
        let sb = Sandbox::new();
        sb.unpack(&gzip(&tar_of(&sample_tree()))).expect("unpack");
        assert_sample_unpacked(&sb);
    }

    #[test]
    fn tar_bz2_is_unpacked() {
        // Served as "context.tar.gz".
        let sb = Sandbox::new();
        sb.unpack(&bzip2(&tar_of(&sample_tree()))).expect("unpack");
        assert_sample_unpacked(&sb);
    }

    #[test]
    fn tar_xz_is_unpacked() {
        // Served as "archive.zip".
        let sb = Sandbox::new();
        sb.unpack(&xz(&tar_of(&sample_tree()))).expect("unpack");
        assert_sample_unpacked(&sb);
    }

    #[test]
    fn zip_is_unpacked() {
        // Served as "context.tar".
        let sb = Sandbox::new();
        let data = zip_of(&[
            ("sub/", b"", 0o755, false),
            ("Dockerfile", b"FROM scratch\nCOPY sub /sub\n", 0o644, false),
            ("sub/run.sh", b"#!/bin/sh\necho hi\n", 0o755, false),
            ("sub/link", b"run.sh", 0o777, true),
        ]);
        sb.unpack(&data).expect("unpack");
        assert_sample_unpacked(&sb);
    }

    #[test]
    fn empty_zip_is_unpacked() {
        let sb = Sandbox::new();
        let data = zip_of(&[]);
        assert!(data.starts_with(b"PK\x05\x06"));
        sb.unpack(&data).expect("unpack");
    }

    #[test]
    fn lone_dockerfile_is_written_as_dockerfile() {
        // Served as "package.tar.gz".
        let sb = Sandbox::new();
        let text = "FROM alpine:3\nRUN echo héllo\n".repeat(10_000);
        sb.unpack(text.as_bytes()).expect("unpack");
        assert_eq!(sb.read("Dockerfile"), text.as_bytes());
    }

    #[test]
    fn binary_junk_and_empty_packages_are_format_errors() {
        let sb = Sandbox::new();
        assert!(matches!(sb.unpack(b""), Err(ContextError::Format(_))));
        let sb = Sandbox::new();
        assert!(matches!(
            sb.unpack(&[0xff, 0x00, 0x13, 0x37]),
            Err(ContextError::Format(_))
        ));
        // Text at first, binary later: not a Dockerfile either.
        let sb = Sandbox::new();
        let mut data = b"FROM scratch\n".repeat(100);
        data.extend_from_slice(&[0xff, 0xfe, 0x00]);
        assert!(matches!(sb.unpack(&data), Err(ContextError::Format(_))));
        // A gzip of something that is not a tar.
        let sb = Sandbox::new();
        assert!(matches!(
            sb.unpack(&gzip(b"FROM scratch\n")),
            Err(ContextError::Format(_))
        ));
    }

    #[test]
    fn old_style_tar_without_ustar_magic_is_unpacked() {
        let sb = Sandbox::new();
        let mut header = Header::new_old();
        header.set_path("Dockerfile").expect("path");
        header.set_size(13);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append(&header, &b"FROM scratch\n"[..])
            .expect("append");
        let data = builder.into_inner().expect("tar");
        assert_ne!(&data[257..262], b"ustar");
        sb.unpack(&data).expect("unpack");
        assert_eq!(sb.read("Dockerfile"), b"FROM scratch\n");
    }

    // ---------------------------------------------------------------------------------------
    // Hostile archives

    #[test]
    fn absolute_path_is_refused() {
        let sb = Sandbox::new();
        let evil = format!("{}/evil", sb.outside().display());
        assert_hostile(
            sb.unpack(&tar_of(&[file(&evil, b"pwned")])),
            "absolute path",
        );
    }

    #[test]
    fn dotdot_path_is_refused() {
        let sb = Sandbox::new();
        let result = sb.unpack(&tar_of(&[file("ok", b"1"), file("../canary", b"pwned")]));
        assert_hostile(result, "\"../canary\" points outside the build context");
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&gzip(&tar_of(&[file("a/../../outside/x", b"pwned")]))),
            "outside the build context",
        );
    }

    #[test]
    fn symlink_to_etc_is_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[symlink("etc", "/etc")])),
            "absolute path \"/etc\"",
        );
    }

    #[test]
    fn symlink_climbing_out_is_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[symlink("x", "../../x")])),
            "outside the build context",
        );
        // Deeper links may climb as far as the root, not one further.
        let sb = Sandbox::new();
        sb.unpack(&tar_of(&[symlink("a/b/up", "../../Dockerfile")]))
            .expect("a link to the root's Dockerfile is fine");
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[symlink("a/b/up", "../../../canary")])),
            "outside the build context",
        );
    }

    #[test]
    fn writing_through_an_inside_symlink_is_allowed() {
        let sb = Sandbox::new();
        sb.unpack(&tar_of(&[
            dir("real/"),
            symlink("alias", "real"),
            file("alias/f", b"through"),
            // A link whose lexical `..` would mean something else once `b` is a link to `.`:
            // stored normalised, it stays inside.
            symlink("b", "."),
            symlink("c", "b/../outside"),
            file("c/evil", b"still inside"),
        ]))
        .expect("unpack");
        assert_eq!(sb.read("real/f"), b"through");
        assert!(
            std::fs::symlink_metadata(sb.dest().join("real/f"))
                .expect("meta")
                .is_file()
        );
        assert_eq!(
            std::fs::read_link(sb.dest().join("c")).expect("link"),
            Path::new("outside")
        );
        assert_eq!(sb.read("outside/evil"), b"still inside");
    }

    #[test]
    fn writing_through_an_outside_symlink_is_refused() {
        let sb = Sandbox::new();
        let out = sb.outside().display().to_string();
        assert_hostile(
            sb.unpack(&tar_of(&[symlink("dir", &out), file("dir/evil", b"pwned")])),
            "outside the build context",
        );
        // `a -> .` then `a/../../x`: the name itself is refused.
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[
                symlink("a", "."),
                file("a/../../canary", b"pwned"),
            ])),
            "outside the build context",
        );
        // A file entry replacing a link never writes through it.
        let sb = Sandbox::new();
        sb.unpack(&tar_of(&[
            symlink("Dockerfile", "sub/real"),
            file("sub/real", b"target"),
            file("Dockerfile", b"replaced"),
        ]))
        .expect("unpack");
        assert_eq!(sb.read("sub/real"), b"target");
        assert_eq!(sb.read("Dockerfile"), b"replaced");
    }

    #[test]
    fn hardlink_to_etc_passwd_is_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[hardlink("passwd", "/etc/passwd")])),
            "outside the build context",
        );
    }

    #[test]
    fn hardlink_climbing_out_is_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[hardlink("c", "../canary")])),
            "outside the build context",
        );
        // Through a symlink that points out of the root is no better (refused at the symlink).
        let sb = Sandbox::new();
        let out = sb.tmp.path().display().to_string();
        assert_hostile(
            sb.unpack(&tar_of(&[symlink("up", &out), hardlink("c", "up/canary")])),
            "outside the build context",
        );
    }

    #[test]
    fn hardlinks_inside_work_and_need_an_earlier_file() {
        let sb = Sandbox::new();
        sb.unpack(&tar_of(&[file("a", b"shared"), hardlink("b", "a")]))
            .expect("unpack");
        assert_eq!(sb.read("b"), b"shared");
        let sb = Sandbox::new();
        assert!(matches!(
            sb.unpack(&tar_of(&[hardlink("b", "later"), file("later", b"x")])),
            Err(ContextError::Format(_))
        ));
        // A hard link to a symlink would move the link's `..`s to another depth.
        let sb = Sandbox::new();
        assert!(
            sb.unpack(&tar_of(&[
                symlink("d/e/up", "../../Dockerfile"),
                hardlink("top", "d/e/up")
            ]))
            .is_err()
        );
    }

    #[test]
    fn device_files_and_fifos_are_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[special("null", EntryType::Char)])),
            "device file",
        );
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[special("sda", EntryType::Block)])),
            "device file",
        );
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&tar_of(&[special("pipe", EntryType::Fifo)])),
            "named pipe",
        );
        assert!(!sb.dest().join("pipe").exists());
    }

    #[test]
    fn zip_with_dotdot_name_is_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&zip_of(&[("../canary", b"pwned", 0o644, false)])),
            "outside the build context",
        );
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&zip_of(&[("..\\canary", b"pwned", 0o644, false)])),
            "outside the build context",
        );
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&zip_of(&[("/abs", b"pwned", 0o644, false)])),
            "absolute path",
        );
    }

    #[test]
    fn zip_symlink_out_is_refused() {
        let sb = Sandbox::new();
        assert_hostile(
            sb.unpack(&zip_of(&[
                ("link", b"../outside", 0o777, true),
                ("link/evil", b"pwned", 0o644, false),
            ])),
            "outside the build context",
        );
    }

    // ---------------------------------------------------------------------------------------
    // Limits and modes

    #[test]
    fn too_many_entries_is_too_large() {
        let sb = Sandbox::new();
        let entries: Vec<Entry> = (0..11).map(|i| file(&format!("f{i}"), b"x")).collect();
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        match sb.unpack_with(&tar_of(&entries), &limits) {
            Err(ContextError::TooLarge(msg)) => {
                assert!(msg.contains("more than 10 entries"), "{msg}")
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let sb = Sandbox::new();
        sb.unpack_with(&tar_of(&entries[..10]), &limits)
            .expect("ten entries fit");
    }

    const MIB: u64 = 1 << 20;
    /// How far past the limit a partial file may get: one copy buffer.
    const CHUNK: u64 = 64 * 1024;

    #[test]
    fn gzip_bomb_stops_at_max_bytes() {
        let sb = Sandbox::new();
        // A tar holding one 50 MB file of zeros, gzipped (about 50 KB), streamed to the encoder.
        let size: u64 = 50 * 1_000_000;
        let mut header = Header::new_gnu();
        header.set_path("bomb").expect("path");
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(header.as_bytes()).expect("gzip");
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            enc.write_all(&zeros[..n]).expect("gzip");
            left -= n as u64;
        }
        enc.write_all(&[0u8; 1024]).expect("gzip");
        let bomb = enc.finish().expect("gzip");
        assert!(bomb.len() < 1_000_000);
        let limits = Limits {
            max_bytes: MIB,
            ..Limits::default()
        };
        assert!(matches!(
            sb.unpack_with(&bomb, &limits),
            Err(ContextError::TooLarge(_))
        ));
        let written = std::fs::metadata(sb.dest().join("bomb")).map_or(0, |m| m.len());
        assert!(written <= MIB + CHUNK, "wrote {written} bytes");
    }

    #[test]
    fn content_is_counted_as_written_not_as_declared() {
        // A lone "Dockerfile" declares no size at all: only counting what is written stops it.
        let sb = Sandbox::new();
        let text = "RUN true\n".repeat(300_000);
        let limits = Limits {
            max_bytes: MIB,
            ..Limits::default()
        };
        assert!(matches!(
            sb.unpack_with(text.as_bytes(), &limits),
            Err(ContextError::TooLarge(_))
        ));
        let written = std::fs::metadata(sb.dest().join("Dockerfile")).map_or(0, |m| m.len());
        assert!(written <= MIB + CHUNK, "wrote {written} bytes");
        // Many small files add up too.
        let sb = Sandbox::new();
        let entries: Vec<Entry> = (0..20)
            .map(|i| file(&format!("f{i}"), &[b'x'; 100_000]))
            .collect();
        assert!(matches!(
            sb.unpack_with(&tar_of(&entries), &limits),
            Err(ContextError::TooLarge(_))
        ));
    }

    #[test]
    fn huge_pax_header_is_too_large_not_out_of_memory() {
        // A pax header the tar crate would read into memory whole: 64 MiB of records, gzipped.
        let sb = Sandbox::new();
        let size: u64 = 64 * MIB;
        let mut header = Header::new_ustar();
        header.set_path("PaxHeaders/x").expect("path");
        header.set_entry_type(EntryType::XHeader);
        header.set_size(size);
        header.set_cksum();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(header.as_bytes()).expect("gzip");
        let filler = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&filler).expect("gzip");
        }
        let mut next = Header::new_ustar();
        next.set_path("Dockerfile").expect("path");
        next.set_size(0);
        next.set_cksum();
        enc.write_all(next.as_bytes()).expect("gzip");
        enc.write_all(&[0u8; 1024]).expect("gzip");
        let data = enc.finish().expect("gzip");
        assert!(matches!(sb.unpack(&data), Err(ContextError::TooLarge(_))));
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_dropped() {
        let sb = Sandbox::new();
        sb.unpack(&tar_of(&[
            exe("suid", b"x", 0o4755),
            exe("sgid", b"x", 0o2750),
            Entry {
                mode: 0o1777,
                ..dir("sticky/")
            },
        ]))
        .expect("unpack");
        assert_eq!(sb.mode("suid"), 0o755);
        assert_eq!(sb.mode("sgid"), 0o750);
        assert_eq!(sb.mode("sticky"), 0o777);
    }

    // ---------------------------------------------------------------------------------------
    // prepare: http sources and Quay's context rules

    /// Serves `routes` (path -> body) on 127.0.0.1; anything else is a 404.
    async fn serve(routes: Vec<(&'static str, Vec<u8>)>) -> String {
        buildman_testkit::tls_provider();
        let mut app = axum::Router::new();
        for (path, body) in routes {
            app = app.route(
                path,
                axum::routing::get(move || async move { body.clone() }),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn quay_package() -> Vec<u8> {
        gzip(&tar_of(&[
            file("README", b"root"),
            dir("sub/"),
            file("sub/Dockerfile", b"FROM scratch\n"),
            file("sub/Dockerfile.dev", b"FROM scratch\nLABEL dev=1\n"),
            symlink("sub/escape", "../README"),
        ]))
    }

    #[tokio::test]
    async fn prepare_downloads_and_resolves_quay_paths() {
        let base = serve(vec![("/pkg", quay_package())]).await;
        let work = tempfile::tempdir().expect("tempdir");
        let src = work.path().join("src").canonicalize();
        assert!(src.is_err(), "src does not exist yet");
        let prepared = prepare(
            &Source::Url(format!("{base}/pkg")),
            "/sub",
            "/sub/Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect("prepare");
        let src = work.path().join("src").canonicalize().expect("src");
        assert_eq!(prepared.context_dir, src.join("sub"));
        assert_eq!(prepared.dockerfile, src.join("sub/Dockerfile"));
        assert!(prepared.context_dir.is_absolute());
        assert!(!work.path().join("package").exists(), "download removed");
    }

    #[tokio::test]
    async fn prepare_accepts_context_relative_and_default_dockerfiles() {
        let base = serve(vec![("/pkg", quay_package())]).await;
        for (context, dockerfile, expected) in [
            ("sub", "Dockerfile.dev", "sub/Dockerfile.dev"),
            ("/sub/", "", "sub/Dockerfile"),
            ("/", "sub/Dockerfile", "sub/Dockerfile"),
            ("", "/sub", "sub/Dockerfile"),
        ] {
            let work = tempfile::tempdir().expect("tempdir");
            let prepared = prepare(
                &Source::Url(format!("{base}/pkg")),
                context,
                dockerfile,
                work.path(),
                &Limits::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{context:?} {dockerfile:?}: {e}"));
            let src = work.path().join("src").canonicalize().expect("src");
            assert_eq!(
                prepared.dockerfile,
                src.join(expected),
                "{context:?} {dockerfile:?}"
            );
        }
    }

    #[tokio::test]
    async fn prepare_refuses_dockerfile_outside_and_reports_missing_paths() {
        let base = serve(vec![("/pkg", quay_package())]).await;
        let url = Source::Url(format!("{base}/pkg"));
        let limits = Limits::default();

        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(&url, "/", "../../etc/passwd", work.path(), &limits)
            .await
            .expect_err("outside");
        assert!(matches!(err, ContextError::Hostile(_)), "{err}");

        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(&url, "/../..", "Dockerfile", work.path(), &limits)
            .await
            .expect_err("context outside");
        assert!(matches!(err, ContextError::Hostile(_)), "{err}");

        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(&url, "/nope", "/nope/Dockerfile", work.path(), &limits)
            .await
            .expect_err("missing context");
        assert!(matches!(err, ContextError::ContextMissing(_)), "{err}");
        assert!(err.to_string().contains("\"/nope\""), "{err}");

        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(&url, "/sub", "/sub/Containerfile", work.path(), &limits)
            .await
            .expect_err("missing dockerfile");
        assert!(matches!(err, ContextError::DockerfileMissing(_)), "{err}");
        assert!(err.to_string().contains("/sub/Containerfile"), "{err}");
    }

    #[tokio::test]
    async fn prepare_refuses_a_dockerfile_symlinked_out_of_the_package() {
        // git checks symlinks out as they are committed; resolution must catch one pointing out.
        let repo = git_repo_with(&[("Dockerfile", "FROM scratch\n")]);
        std::fs::remove_file(repo.path().join("Dockerfile")).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", repo.path().join("Dockerfile")).expect("symlink");
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "evil"]);
        let sha = git_out(repo.path(), &["rev-parse", "HEAD"]);
        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(
            &Source::Git {
                url: format!("file://{}", repo.path().display()),
                sha,
                private_key: None,
            },
            "/",
            "Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect_err("symlinked out");
        assert!(matches!(err, ContextError::Hostile(_)), "{err}");
    }

    #[tokio::test]
    async fn prepare_reports_http_errors_and_bad_schemes() {
        let base = serve(vec![("/pkg", quay_package())]).await;
        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(
            &Source::Url(format!("{base}/missing?X-Amz-Signature=secret")),
            "/",
            "Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect_err("404");
        assert!(matches!(err, ContextError::Fetch(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("404"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");

        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(
            &Source::Url("file:///etc/passwd".into()),
            "/",
            "Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect_err("scheme");
        assert!(matches!(err, ContextError::Fetch(_)), "{err}");

        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(
            &Source::Url(format!("{base}/pkg")),
            "/",
            "Dockerfile",
            work.path(),
            &Limits {
                max_download: 100,
                ..Limits::default()
            },
        )
        .await
        .expect_err("too big");
        assert!(matches!(err, ContextError::TooLarge(_)), "{err}");
    }

    // ---------------------------------------------------------------------------------------
    // git sources

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git");
        assert!(status.success(), "git {args:?}");
    }

    fn git_out(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    /// A repository with one commit holding `files`.
    fn git_repo_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let repo = tempfile::tempdir().expect("tempdir");
        git(repo.path(), &["init", "-q"]);
        for (name, text) in files {
            std::fs::write(repo.path().join(name), text).expect("write");
        }
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "first"]);
        repo
    }

    /// A repository with two commits; returns it and the older commit's sha.
    fn two_commit_repo() -> (tempfile::TempDir, String) {
        let repo = git_repo_with(&[("Dockerfile", "FROM old\n")]);
        let old = git_out(repo.path(), &["rev-parse", "HEAD"]);
        std::fs::write(repo.path().join("Dockerfile"), "FROM new\n").expect("write");
        git(repo.path(), &["commit", "-q", "-am", "second"]);
        (repo, old)
    }

    #[tokio::test]
    async fn git_checks_out_the_requested_older_commit() {
        let (repo, old) = two_commit_repo();
        let work = tempfile::tempdir().expect("tempdir");
        let prepared = prepare(
            &Source::Git {
                url: format!("file://{}", repo.path().display()),
                sha: old.clone(),
                private_key: None,
            },
            "/",
            "/Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect("prepare");
        assert_eq!(
            std::fs::read_to_string(&prepared.dockerfile).expect("read"),
            "FROM old\n"
        );
        assert_eq!(
            git_out(&work.path().join("src"), &["rev-parse", "HEAD"]),
            old
        );
    }

    #[tokio::test]
    async fn git_fetches_a_commit_the_clone_lacks() {
        // A pull request's head: reachable only from refs/pull/*, which a clone skips.
        let repo = git_repo_with(&[("Dockerfile", "FROM base\n")]);
        git(repo.path(), &["checkout", "-q", "-b", "pr"]);
        std::fs::write(repo.path().join("Dockerfile"), "FROM pr\n").expect("write");
        git(repo.path(), &["commit", "-q", "-am", "pr"]);
        let sha = git_out(repo.path(), &["rev-parse", "HEAD"]);
        git(repo.path(), &["update-ref", "refs/pull/1/head", &sha]);
        git(repo.path(), &["checkout", "-q", "-"]);
        git(repo.path(), &["branch", "-q", "-D", "pr"]);
        let work = tempfile::tempdir().expect("tempdir");
        let prepared = prepare(
            &Source::Git {
                url: format!("file://{}", repo.path().display()),
                sha,
                private_key: None,
            },
            "/",
            "Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect("prepare");
        assert_eq!(
            std::fs::read_to_string(&prepared.dockerfile).expect("read"),
            "FROM pr\n"
        );
    }

    #[tokio::test]
    async fn git_reports_a_bad_sha() {
        let (repo, _) = two_commit_repo();
        for sha in [
            "0123456789abcdef0123456789abcdef01234567",
            "not-a-sha",
            "--help",
        ] {
            let work = tempfile::tempdir().expect("tempdir");
            let err = prepare(
                &Source::Git {
                    url: format!("file://{}", repo.path().display()),
                    sha: sha.into(),
                    private_key: None,
                },
                "/",
                "Dockerfile",
                work.path(),
                &Limits::default(),
            )
            .await
            .expect_err("bad sha");
            assert!(matches!(err, ContextError::Git(_)), "{sha}: {err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    /// Every file under `dir`, recursively.
    fn all_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read_dir") {
                let entry = entry.expect("entry");
                let ty = entry.file_type().expect("type");
                if ty.is_dir() {
                    stack.push(entry.path());
                } else if ty.is_file() {
                    out.push(entry.path());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn git_private_key_is_removed_and_never_copied() {
        const KEY_MARK: &str = "DUMMYKEYMATERIALb3BlbnNzaC1rZXktdjEAAAAABG5vbmU";
        let key = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MARK}\n-----END OPENSSH PRIVATE KEY-----\n"
        );
        let (repo, old) = two_commit_repo();
        let work = tempfile::tempdir().expect("tempdir");
        prepare(
            &Source::Git {
                url: format!("file://{}", repo.path().display()),
                sha: old,
                private_key: Some(key.clone()),
            },
            "/",
            "Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect("prepare");
        let names: Vec<_> = std::fs::read_dir(work.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("src")],
            "key file left behind"
        );
        for path in all_files(work.path()) {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes
                    .windows(KEY_MARK.len())
                    .any(|w| w == KEY_MARK.as_bytes()),
                "{} holds the key",
                path.display()
            );
        }

        // And on failure (bad sha after the key is written): gone too, and not in the message.
        let work = tempfile::tempdir().expect("tempdir");
        let err = prepare(
            &Source::Git {
                url: format!("file://{}/nonexistent", repo.path().display()),
                sha: "abcdef1".into(),
                private_key: Some(key),
            },
            "/",
            "Dockerfile",
            work.path(),
            &Limits::default(),
        )
        .await
        .expect_err("no such repo");
        assert!(!err.to_string().contains(KEY_MARK), "{err}");
        assert!(!work.path().join("git-ssh-key").exists());
    }

    // ---------------------------------------------------------------------------------------
    // The fuzz corpus

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/unpack")
    }

    /// Small limits, as the fuzz target uses.
    fn fuzz_limits() -> Limits {
        Limits {
            max_bytes: MIB,
            max_entries: 1000,
            max_download: MIB,
        }
    }

    #[test]
    fn fuzz_corpus_never_escapes() {
        let dir = corpus_dir();
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus dir") {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read");
            let sb = Sandbox::new();
            // Any result is fine; escaping (checked by the sandbox) or panicking is not.
            let _ = sb.unpack_with(&data, &fuzz_limits());
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} corpus files in {}", dir.display());
    }

    /// Writes the seed corpus: `cargo test -p buildman-worker --test context -- --ignored`.
    #[test]
    #[ignore = "regenerates crates/worker/fuzz/corpus/unpack"]
    fn write_seed_corpus() {
        let out = corpus_dir();
        std::fs::create_dir_all(&out).expect("mkdir");
        let small = || {
            vec![
                dir("sub/"),
                file("Dockerfile", b"FROM scratch\nCOPY sub /sub\n"),
                exe("sub/run.sh", b"#!/bin/sh\n", 0o755),
                symlink("sub/link", "run.sh"),
                hardlink("sub/hard", "Dockerfile"),
            ]
        };
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            ("tar", tar_of(&small())),
            ("tar-gz", gzip(&tar_of(&small()))),
            ("tar-bz2", bzip2(&tar_of(&small()))),
            ("tar-xz", xz(&tar_of(&small()))),
            (
                "zip",
                zip_of(&[
                    ("sub/", b"", 0o755, false),
                    ("Dockerfile", b"FROM scratch\n", 0o644, false),
                    ("sub/link", b"../Dockerfile", 0o777, true),
                ]),
            ),
            ("dockerfile", b"FROM alpine:3\nRUN echo hi\n".to_vec()),
            (
                "hostile-tar",
                tar_of(&[
                    symlink("a", "."),
                    file("a/../../escape", b"x"),
                    symlink("out", "/tmp"),
                    hardlink("pw", "/etc/passwd"),
                ]),
            ),
            (
                "hostile-symlink-chain",
                tar_of(&[
                    symlink("b", "."),
                    symlink("c", "b/../x"),
                    file("c/y", b"x"),
                    special("dev", EntryType::Char),
                ]),
            ),
        ];
        for (name, data) in seeds {
            std::fs::write(out.join(name), data).expect("write seed");
        }
    }
}
