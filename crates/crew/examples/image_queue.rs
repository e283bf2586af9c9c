//! An image-processing queue, as travetto's worker docs build one: uploads arrive
//! on a queue while the program runs, a fixed pool of stateful workers resizes
//! each into a thumbnail, and a progress bar follows the work.
//!
//! - The queue is a channel; a producer thread sends uploads into it and closes it
//!   when it is done. `pool.feed(queue)` keeps a bounded window of them in flight,
//!   and its feeder thread, not this one, waits on the queue.
//! - Each worker keeps its own state: a pixel buffer it reuses from image to image
//!   (no allocation per image once it is big enough) and a count of what it did.
//! - One upload is broken (no pixels); its error comes back in its place and the
//!   rest carry on.
//!
//! `cargo run --example image_queue` (the bar is drawn when stderr is a terminal).

use std::sync::mpsc;

use crew::{Context, Pool, StartError, Worker, WorkerId};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

/// How many uploads the producer sends.
const UPLOADS: u64 = 40;
/// The upload that arrives broken.
const BROKEN: u64 = 13;
/// Thumbnails fit in a square this many pixels wide.
const THUMBNAIL: u32 = 48;

/// One upload: an image to make a thumbnail of. The pixels are drawn by the
/// worker from the seed, standing in for reading a file.
#[derive(Debug)]
struct Upload {
    id: u64,
    width: u32,
    height: u32,
    seed: u32,
}

/// What a worker made of one upload.
#[derive(Debug)]
struct Thumbnail {
    id: u64,
    width: u32,
    height: u32,
    /// The thumbnail's mean brightness, 0–255: a check that the pixels went
    /// through the resize.
    mean_luma: u8,
    worker: WorkerId,
}

/// A worker with state: the buffer it decodes into, reused, and what it did.
struct Resizer {
    pixels: Vec<u8>,
    resized: u64,
}

impl Worker for Resizer {
    type Input = Upload;
    type Output = Thumbnail;
    type Error = String;
    type Message = ();

    fn start(_ctx: &mut Context<'_>) -> Result<Self, StartError> {
        Ok(Resizer {
            pixels: Vec::new(),
            resized: 0,
        })
    }

    fn run(&mut self, upload: Upload, ctx: &mut Context<'_>) -> Result<Thumbnail, String> {
        if upload.width == 0 || upload.height == 0 {
            return Err(format!("upload {} has no pixels", upload.id));
        }
        // "Decode" into the reused buffer: it grows to the largest image this
        // worker has seen and is never freed between images.
        let mut pixels = std::mem::take(&mut self.pixels);
        draw(&mut pixels, &upload);
        let image = RgbImage::from_raw(upload.width, upload.height, pixels)
            .ok_or_else(|| format!("upload {}: buffer too small", upload.id))?;

        let (width, height) = fit(upload.width, upload.height, THUMBNAIL);
        let thumbnail = imageops::resize(&image, width, height, FilterType::Triangle);
        self.pixels = image.into_raw(); // the buffer goes back for the next image
        self.resized += 1;

        let luma: u64 = thumbnail
            .pixels()
            .map(|Rgb([r, g, b])| {
                (u64::from(*r) * 299 + u64::from(*g) * 587 + u64::from(*b) * 114) / 1000
            })
            .sum();
        let count = u64::from(width) * u64::from(height);
        Ok(Thumbnail {
            id: upload.id,
            width,
            height,
            mean_luma: u8::try_from(luma / count).unwrap_or(u8::MAX),
            worker: ctx.worker_id(),
        })
    }

    fn stop(&mut self, ctx: &mut Context<'_>) {
        println!(
            "{} resized {} images with one {} KiB buffer",
            ctx.worker_id(),
            self.resized,
            self.pixels.capacity() / 1024
        );
    }
}

/// Fills `pixels` with `upload`'s image: a diagonal gradient with bands that
/// depend on the seed.
fn draw(pixels: &mut Vec<u8>, upload: &Upload) {
    let (w, h) = (upload.width as usize, upload.height as usize);
    pixels.clear();
    pixels.reserve(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let band = ((x + y + upload.seed as usize) / 16) % 2;
            pixels.push((x * 255 / w) as u8);
            pixels.push((y * 255 / h) as u8);
            pixels.push(if band == 0 { 40 } else { 220 });
        }
    }
}

/// The largest size within `side × side` with `width × height`'s proportions.
fn fit(width: u32, height: u32, side: u32) -> (u32, u32) {
    if width >= height {
        (side, (height * side / width).max(1))
    } else {
        ((width * side / height).max(1), side)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::<Resizer>::builder()
        .workers(3)
        .thread_name("resizer")
        .build()?;

    // The queue: a producer sends uploads while the pool works, then closes it.
    // A bounded channel, so the producer, too, waits when the pool falls behind.
    let (uploads, queue) = mpsc::sync_channel(4);
    let producer = std::thread::spawn(move || {
        for id in 0..UPLOADS {
            let (width, height) = if id == BROKEN {
                (0, 0)
            } else {
                (320 + (id as u32 % 5) * 64, 200 + (id as u32 % 4) * 56)
            };
            let upload = Upload {
                id,
                width,
                height,
                seed: id as u32 * 7,
            };
            if uploads.send(upload).is_err() {
                return; // the feed is gone
            }
        }
    }); // `uploads` dropped: the queue is closed

    // At most 6 uploads between the queue and this loop; results as they finish.
    let mut thumbnails = Vec::new();
    let mut failed = Vec::new();
    for (index, result) in pool.feed(queue).window(6).with_progress() {
        match result {
            Ok(thumbnail) => thumbnails.push(thumbnail),
            Err(error) => {
                match error.user_error() {
                    Some(reason) => println!("upload #{index} failed: {reason}"),
                    None => println!("upload #{index} failed: {error}"),
                }
                failed.push(index);
            }
        }
    }
    producer.join().expect("the producer panicked");

    thumbnails.sort_by_key(|t| t.id);
    for t in thumbnails.iter().take(3) {
        println!(
            "thumbnail {:>2}: {}x{}, mean luma {}, by {}",
            t.id, t.width, t.height, t.mean_luma, t.worker
        );
    }
    println!("…");

    // Every upload came back once: a thumbnail, or the broken one's error.
    assert_eq!(thumbnails.len() + failed.len(), UPLOADS as usize);
    assert_eq!(failed, vec![BROKEN as usize]);
    assert!(thumbnails
        .iter()
        .all(|t| t.width.max(t.height) == THUMBNAIL && t.mean_luma > 0));

    pool.shutdown(); // each worker prints what it did
    println!(
        "image_queue: {UPLOADS} uploads, {} thumbnails, {} failed",
        thumbnails.len(),
        failed.len()
    );
    Ok(())
}
