//! A three-stage pipeline over files, as @travetto/worker chains its steps:
//! decode each image, make a grey thumbnail of it, encode the thumbnail to a new
//! file, with a progress bar per stage.
//!
//! - **decode** runs in worker processes: the files come from outside, and a
//!   decoder that crashes on a bad one costs only that file (`crew::bootstrap`
//!   first in `main`, so the workers re-run this program).
//! - **transform** is a closure on a thread pool.
//! - **encode** is a worker type on another thread pool; `then_with` builds its
//!   input (the thumbnail and where to write it) from the stage before's output.
//!
//! Each stage keeps a bounded window of files, so a slow encoder holds the
//! decoders back instead of piling decoded images up in memory. One file is
//! corrupt: its error reaches the end in its place, naming the stage, and the
//! other files carry on. Results come in the order of the files.
//!
//! `cargo run --example pipeline --features indicatif` (the bars are drawn when
//! stderr is a terminal).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crew::indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use crew::{Context, Pool, StartError, Worker};
use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

/// How many images to make.
const FILES: usize = 24;
/// The one that is not an image.
const CORRUPT: usize = 9;
/// Thumbnails fit in a square this many pixels wide.
const THUMBNAIL: u32 = 64;

/// A decoded image, as it crosses back from a decoder process.
#[derive(Debug, Serialize, Deserialize)]
struct Decoded {
    name: String,
    width: u32,
    height: u32,
    #[serde(with = "serde_bytes")]
    rgb: Vec<u8>,
}

/// Decodes one file; runs in a worker process.
struct Decoder;

impl Worker for Decoder {
    type Input = PathBuf;
    type Output = Decoded;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Decoder)
    }

    fn run(&mut self, path: PathBuf, _ctx: &mut Context<'_>) -> Result<Decoded, String> {
        let name = file_stem(&path);
        let image = image::open(&path).map_err(|e| format!("{name}: {e}"))?;
        let rgb = image.to_rgb8();
        Ok(Decoded {
            name,
            width: rgb.width(),
            height: rgb.height(),
            rgb: rgb.into_raw(),
        })
    }
}

/// A thumbnail, and the file to write it to.
struct Encode {
    thumbnail: GrayImage,
    name: String,
    to: PathBuf,
}

/// What the encoder wrote.
#[derive(Debug)]
struct Written {
    path: PathBuf,
    bytes: u64,
    width: u32,
    height: u32,
}

/// Encodes thumbnails to PGM files; counts what it wrote, per worker.
struct Encoder {
    written: u64,
}

impl Worker for Encoder {
    type Input = Encode;
    type Output = Written;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Encoder { written: 0 })
    }

    fn run(&mut self, job: Encode, _ctx: &mut Context<'_>) -> Result<Written, String> {
        let path = job.to.join(format!("{}.pgm", job.name));
        job.thumbnail
            .save(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        self.written += 1;
        Ok(Written {
            path,
            bytes,
            width: job.thumbnail.width(),
            height: job.thumbnail.height(),
        })
    }

    fn stop(&mut self, ctx: &mut Context<'_>) {
        println!(
            "encoder {} wrote {} thumbnails",
            ctx.worker_id(),
            self.written
        );
    }
}

/// The transform: a grey thumbnail, mirrored. Pure CPU work, on threads.
fn thumbnail(decoded: Decoded) -> (String, GrayImage) {
    let rgb = RgbImage::from_raw(decoded.width, decoded.height, decoded.rgb)
        .expect("a decoder sends width × height × 3 bytes");
    let (width, height) = fit(decoded.width, decoded.height, THUMBNAIL);
    let small = imageops::resize(&rgb, width, height, FilterType::Triangle);
    let grey = imageops::grayscale(&small);
    (decoded.name, imageops::flip_horizontal(&grey))
}

/// The largest size within `side × side` with `width × height`'s proportions.
fn fit(width: u32, height: u32, side: u32) -> (u32, u32) {
    if width >= height {
        (side, (height * side / width).max(1))
    } else {
        ((width * side / height).max(1), side)
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes the input files: colour gradients of a few sizes as PPM, and one file
/// that only says it is one.
fn make_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut paths = Vec::new();
    for n in 0..FILES {
        let path = dir.join(format!("photo-{n:02}.ppm"));
        if n == CORRUPT {
            std::fs::write(&path, b"P6\nthis is not an image\n")?;
        } else {
            let (w, h) = (320 + (n as u32 % 4) * 80, 240 + (n as u32 % 3) * 60);
            let image = RgbImage::from_fn(w, h, |x, y| {
                Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (n * 10) as u8])
            });
            image.save(&path)?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// A bar for one stage, named.
fn stage_bar(bars: &MultiProgress, name: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:>9} {wide_bar} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bars.add(ProgressBar::no_length().with_style(style).with_prefix(name))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a decoder process this serves `Decoder` and never returns.
    crew::bootstrap::<Decoder>();

    let dir = tempfile::tempdir()?;
    let thumbs = dir.path().join("thumbs");
    std::fs::create_dir(&thumbs)?;
    let files = make_files(dir.path())?;

    let decoders = Pool::<Decoder>::builder()
        .processes(2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let cpu: Pool = Pool::builder().workers(2).build()?;
    let encoders = Pool::<Encoder>::builder().workers(1).build()?;

    let bars = MultiProgress::new();
    let results = decoders
        .map(files.clone())
        .with_progress_bar(stage_bar(&bars, "decode"))
        .then_fn(&cpu, thumbnail)
        .with_progress_bar(stage_bar(&bars, "transform"))
        .then_with(&encoders, |(name, thumbnail)| Encode {
            thumbnail,
            name,
            to: thumbs.clone(),
        })
        .window(2) // one encoder: at most 2 thumbnails wait for it
        .with_progress_bar(stage_bar(&bars, "encode"));

    let mut written = Vec::new();
    let mut failed = Vec::new();
    for (index, result) in results {
        match result {
            Ok(file) => written.push(file),
            Err(error) => {
                let why = error
                    .user_error()
                    .map_or_else(|| error.task_error().to_string(), |e| e.to_string());
                let stage = error.stage();
                bars.suspend(|| println!("file {index} failed in stage {stage}: {why}"));
                failed.push((index, error.stage()));
            }
        }
    }

    for file in written.iter().take(3) {
        println!(
            "{}: {}x{}, {} bytes",
            file.path.file_name().unwrap_or_default().to_string_lossy(),
            file.width,
            file.height,
            file.bytes
        );
    }
    println!("…");

    // Every file came back once, in order: a thumbnail, or the corrupt one's
    // error from stage 0 (decode).
    assert_eq!(written.len() + failed.len(), FILES);
    assert_eq!(failed, [(CORRUPT, 0)]);
    let names: Vec<String> = written.iter().map(|w| file_stem(&w.path)).collect();
    let expected: Vec<String> = (0..FILES)
        .filter(|n| *n != CORRUPT)
        .map(|n| format!("photo-{n:02}"))
        .collect();
    assert_eq!(names, expected);
    // The thumbnails are real files: read one back.
    let first = image::open(&written[0].path)?;
    assert_eq!((first.width(), first.height()), (THUMBNAIL, 48));
    assert!(written
        .iter()
        .all(|w| w.width.max(w.height) == THUMBNAIL && w.bytes > 0));

    encoders.shutdown(); // the encoder prints what it wrote
    println!(
        "pipeline: {FILES} files, {} thumbnails written, 1 failed in stage 0 (decode)",
        written.len()
    );
    Ok(())
}
