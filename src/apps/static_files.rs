//! Static files from a docroot: ETag and Last-Modified (304s), Range (206), gzip, no traversal, no
//! symbolic links out of the docroot, no open redirects.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::Uri;
use axum::http::uri::PathAndQuery;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::services::fs::{Backend, File};
use tracing::warn;

use crate::logging::LogThrottle;

/// Files refused because they lie outside the docroot are logged at most this often.
static ESCAPE_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Serves the files under `docroot`; paths that name no file fall through to `fallback`.
///
/// `ServeDir` decodes the path and refuses any component that is `..`, a root or a prefix, so
/// `/..%2f..%2fetc/passwd` and the like answer 404 instead of leaving the folder. It would follow
/// symbolic links out of it, though, so it reads the disk through [`ConfinedBackend`], which answers
/// "not found" for anything that resolves outside the docroot (Tomcat's `allowLinking="false"`, except
/// that links staying inside work). And it answers a folder without a trailing slash with a redirect
/// to the request's own target plus `/`: for `//example.com` that is `Location: //example.com/`,
/// another site. So the target it sees is cut to its path and query, with any run of leading slashes
/// made one, and every `Location` it writes is a path on this node.
pub fn router(docroot: &Path, fallback: Router) -> Router {
    // Canonical once, so the check compares like with like (the docroot itself may be a link).
    let root = docroot
        .canonicalize()
        .unwrap_or_else(|_| docroot.to_path_buf());
    let backend = ConfinedBackend {
        root: Arc::new(root.clone()),
    };
    let files = ServeDir::with_backend(root, backend)
        .append_index_html_on_directories(true)
        .precompressed_gzip()
        .fallback(fallback);
    Router::new()
        .fallback_service(files)
        .layer(axum::middleware::map_request(path_only))
        .layer(CompressionLayer::new())
}

/// Rewrites the request target to its path and query, with leading slashes made one.
async fn path_only(mut request: Request) -> Request {
    let uri = request.uri();
    let path = uri.path();
    let trimmed = path.trim_start_matches('/');
    if uri.scheme().is_none() && uri.authority().is_none() && path.len() == trimmed.len() + 1 {
        return request;
    }
    let target = match uri.query() {
        Some(query) => format!("/{trimmed}?{query}"),
        None => format!("/{trimmed}"),
    };
    // Cut from a valid target, so it parses; if it did not, ServeDir would see the original.
    if let Ok(path_and_query) = PathAndQuery::try_from(target) {
        let mut parts = axum::http::uri::Parts::default();
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// `ServeDir`'s disk, confined to the canonical docroot: every open and every metadata lookup (the
/// file, its `.gz` twin, a folder's `index.html`) of a path that resolves outside it fails as not found.
///
/// An open is checked on the descriptor itself (where `/proc/self/fd` says the opened file is), so
/// no link swapped in between a check and the open can get another file served. A metadata lookup
/// (folder tests, `HEAD`) resolves the path first: racing it can at most reveal a size and a date.
#[derive(Debug, Clone)]
pub struct ConfinedBackend {
    root: Arc<PathBuf>,
}

impl ConfinedBackend {
    fn refuse(&self, path: &Path) -> io::Error {
        if let Some(held_back) = ESCAPE_LOG.allow() {
            warn!(
                path = %path.strip_prefix(&*self.root).unwrap_or(path).display(),
                held_back,
                "refused a docroot file that resolves outside the docroot (a symbolic link)"
            );
        }
        io::Error::new(io::ErrorKind::NotFound, "outside the docroot")
    }

    fn open_blocking(&self, path: &Path) -> io::Result<std::fs::File> {
        let file = std::fs::File::open(path)?;
        let opened = opened_path(&file, path)?;
        if !opened.starts_with(&*self.root) {
            return Err(self.refuse(path));
        }
        Ok(file)
    }

    fn metadata_blocking(&self, path: &Path) -> io::Result<std::fs::Metadata> {
        let real = path.canonicalize()?;
        if !real.starts_with(&*self.root) {
            return Err(self.refuse(path));
        }
        std::fs::metadata(real)
    }
}

/// Where the file behind `file` really is: `/proc/self/fd` on Linux, else (or without `/proc`)
/// `path` resolved now, which a swapped link could race.
fn opened_path(file: &std::fs::File, path: &Path) -> io::Result<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            return Ok(real);
        }
    }
    let _ = file;
    path.canonicalize()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(io::Error::other(err)))
}

impl Backend for ConfinedBackend {
    type File = ConfinedFile;
    type Metadata = std::fs::Metadata;
    type OpenFuture = BoxFuture<ConfinedFile>;
    type MetadataFuture = BoxFuture<std::fs::Metadata>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let backend = self.clone();
        Box::pin(async move {
            let file = blocking(move || backend.open_blocking(&path)).await?;
            Ok(ConfinedFile(tokio::fs::File::from_std(file)))
        })
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let backend = self.clone();
        Box::pin(blocking(move || backend.metadata_blocking(&path)))
    }
}

/// A file [`ConfinedBackend`] opened.
#[derive(Debug)]
pub struct ConfinedFile(tokio::fs::File);

impl AsyncRead for ConfinedFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncSeek for ConfinedFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.0).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.0).poll_complete(cx)
    }
}

impl File for ConfinedFile {
    type Metadata = std::fs::Metadata;
    type MetadataFuture<'a> =
        Pin<Box<dyn Future<Output = io::Result<std::fs::Metadata>> + Send + 'a>>;

    fn metadata(&self) -> Self::MetadataFuture<'_> {
        Box::pin(self.0.metadata())
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: &Router, target: &str, gzip: bool) -> (StatusCode, Option<String>, String) {
        let mut request = Request::builder().uri(target);
        if gzip {
            request = request.header(header::ACCEPT_ENCODING, "gzip");
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            location,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn docroot() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("www");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::create_dir_all(root.join("evil.example")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret.txt"), "secret").expect("write");
        std::fs::write(root.join("inside.txt"), "inside").expect("write");
        std::fs::write(root.join("page.html"), "page").expect("write");
        std::fs::write(root.join("sub/index.html"), "sub index").expect("write");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("symlink");
        };
        link(&outside.join("secret.txt"), "link-out.txt");
        link(&outside, "dir-out");
        link(&root.join("inside.txt"), "link-in.txt");
        link(Path::new("inside.txt"), "relative-in.txt");
        link(&outside.join("secret.txt"), "page.html.gz");
        let app = router(&root, Router::new());
        (dir, app)
    }

    #[tokio::test]
    async fn symlinks_out_of_the_docroot_are_not_followed_those_inside_are() {
        let (_dir, app) = docroot();
        assert_eq!(get(&app, "/inside.txt", false).await.2, "inside");
        let (status, _, body) = get(&app, "/link-in.txt", false).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "inside"));
        let (status, _, body) = get(&app, "/relative-in.txt", false).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "inside"));
        for target in [
            "/link-out.txt",
            "//link-out.txt",
            "/dir-out/secret.txt",
            "/./dir-out/secret.txt",
            "/link%2Dout.txt",
        ] {
            let (status, _, body) = get(&app, target, false).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{target}");
            assert!(!body.contains("secret"), "{target}: {body}");
        }
        // The gzip twin of a file inside is a link out: the file itself is served instead.
        let (status, _, body) = get(&app, "/page.html", true).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "page"));
    }

    #[tokio::test]
    async fn folder_redirects_stay_on_this_site() {
        let (_dir, app) = docroot();
        for (target, expected) in [
            ("/sub", "/sub/"),
            ("//sub", "/sub/"),
            ("///evil.example", "/evil.example/"),
            ("//evil.example?x=1", "/evil.example/?x=1"),
            ("http://evil.example/sub", "/sub/"),
        ] {
            let (status, location, _) = get(&app, target, false).await;
            assert!(status.is_redirection(), "{target}: {status}");
            assert_eq!(location.as_deref(), Some(expected), "{target}");
        }
        assert_eq!(get(&app, "//sub/", false).await.2, "sub index");
        assert_eq!(
            get(&app, "//etc/passwd", false).await.0,
            StatusCode::NOT_FOUND
        );
    }
}
