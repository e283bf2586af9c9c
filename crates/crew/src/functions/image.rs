//! This program's loaded image: where its code is in this process, and which
//! build it is (`functions.md`, "Addresses" and "The same build").
//!
//! The dynamic loader knows every object it mapped (the executable, and each
//! shared library) with its *load bias*, what is added to an address of the
//! ELF file to get the address in this process, and its program headers.
//! `dl_iterate_phdr(3)` walks that list; crew takes the object that holds crew's
//! own code, which for a Rust program is the executable.

use std::ffi::CStr;
use std::hash::Hasher;
use std::io::Read;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::OnceLock;

use nix::libc;
use object::elf::{ELF_NOTE_GNU, NT_GNU_BUILD_ID, PF_R, PF_X, PT_LOAD, PT_NOTE};
use object::read::elf::NoteIterator;
use object::NativeEndian;

/// The ELF class of this target, for the note reader.
#[cfg(target_pointer_width = "64")]
type Elf = object::elf::FileHeader64<NativeEndian>;
#[cfg(target_pointer_width = "32")]
type Elf = object::elf::FileHeader32<NativeEndian>;

/// The object (executable or library) that holds crew's code, as loaded in
/// this process.
#[derive(Debug)]
pub(crate) struct Image {
    /// The load bias: an address in the ELF file plus this is the address here.
    bias: usize,
    /// Its executable segments, as addresses in this process.
    code: Vec<Range<usize>>,
    /// Which build it is.
    pub(crate) build: Build,
}

/// A build's identity: what a call carries, and what a worker compares.
#[derive(Debug)]
pub(crate) struct Build {
    /// A 64-bit digest of the identity, sent with every call.
    pub(crate) tag: u64,
    /// The identity as people read it: `GNU build id 4adf…` or `file hash …`.
    pub(crate) shown: String,
    /// The identity's bytes, which key a call's seal ([`Image::seal`]).
    key: Vec<u8>,
}

impl Image {
    /// This process's image, found once (the first call walks the loader's
    /// list, and without a build id hashes the executable's file). An error
    /// says why crew cannot send functions from or to this program.
    pub(crate) fn get() -> Result<&'static Image, &'static str> {
        static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
        IMAGE
            .get_or_init(Image::locate)
            .as_ref()
            .map_err(String::as_str)
    }

    /// The offset in the image of the code at `address`: its address in the
    /// ELF file. `None` if `address` is not in one of the image's executable
    /// segments (a function of another shared object, say).
    pub(crate) fn offset_of(&self, address: *const ()) -> Option<u64> {
        let address = address.expose_provenance();
        self.code
            .iter()
            .any(|code| code.contains(&address))
            .then(|| address.wrapping_sub(self.bias) as u64)
    }

    /// The address in this process of the code at `offset` in the image, if
    /// that lands in one of its executable segments.
    pub(crate) fn code_at(&self, offset: u64) -> Option<*const ()> {
        let address = self.bias.checked_add(usize::try_from(offset).ok()?)?;
        self.code
            .iter()
            .any(|code| code.contains(&address))
            .then(|| std::ptr::with_exposed_provenance(address))
    }

    /// The seal of a call of the code at `function` through the trampoline at
    /// `trampoline`: a keyed hash that only crew computes, so a call that did
    /// not come from `Function::call` (bytes decoded into a `FnCall` by other
    /// code: its `Deserialize` is public, as every worker input's must be) is
    /// refused, not run (`functions.md`, "Why it is safe").
    pub(crate) fn seal(&self, trampoline: u64, function: u64) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(b"crew: a call of a function");
        hasher.write(&self.build.key);
        hasher.write_u64(trampoline);
        hasher.write_u64(function);
        hasher.finish()
    }

    fn locate() -> Result<Image, String> {
        // Any function of crew will do: the object that holds it is crew's.
        let probe = (Image::locate as fn() -> Result<Image, String>) as *const ();
        let mut search = Search {
            probe: probe.expose_provenance(),
            found: None,
        };
        // SAFETY: `visit` is a callback of the signature `dl_iterate_phdr`
        // expects, and `data` points to `search`, which outlives the call and
        // is not touched elsewhere until it returns.
        unsafe {
            libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast::<libc::c_void>());
        }
        let found = search
            .found
            .ok_or("the dynamic loader does not list the object that holds crew's code")?;
        if found.code.is_empty() {
            return Err("the object that holds crew's code has no executable segment".into());
        }
        let build = match found.build_id {
            Some(id) => Build::from_id(&id),
            None => Build::from_file(found.path)?,
        };
        Ok(Image {
            bias: found.bias,
            code: found.code,
            build,
        })
    }
}

impl Build {
    /// From the linker's GNU build id (a hash of the linked output by default:
    /// any change to the code changes it).
    fn from_id(id: &[u8]) -> Build {
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(b"gnu build id");
        hasher.write(id);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Build {
            tag: hasher.finish(),
            shown: format!("GNU build id {hex}"),
            key: id.to_vec(),
        }
    }

    /// Without a build id (a linker told not to write one): a hash of the
    /// whole file, read once. `/proc/self/exe` is the file this process runs
    /// even if its path was replaced since (a rebuild while the pool runs).
    fn from_file(path: Option<PathBuf>) -> Result<Build, String> {
        let path = path.unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        let read = |path: &PathBuf| -> std::io::Result<u64> {
            let mut file = std::fs::File::open(path)?;
            let mut hasher = std::hash::DefaultHasher::new();
            hasher.write(b"file");
            let mut buffer = vec![0; 1 << 16];
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    return Ok(hasher.finish());
                }
                hasher.write(&buffer[..n]);
            }
        };
        let tag = read(&path).map_err(|e| {
            format!(
                "the program has no GNU build id and its file {} could not be read: {e}",
                path.display()
            )
        })?;
        Ok(Build {
            tag,
            shown: format!("file hash {tag:016x} (no GNU build id)"),
            key: tag.to_le_bytes().to_vec(),
        })
    }
}

/// What `visit` looks for, and what it found.
struct Search {
    /// An address of crew's code.
    probe: usize,
    found: Option<Found>,
}

struct Found {
    bias: usize,
    code: Vec<Range<usize>>,
    build_id: Option<Vec<u8>>,
    /// The object's file, for a shared library; `None` for the executable.
    path: Option<PathBuf>,
}

/// The `dl_iterate_phdr` callback: stops (returns 1) at the object whose
/// loaded segments hold `Search::probe`, having copied out what crew needs.
/// It must not unwind (it is called from C): nothing in it panics.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut Search` that `Image::locate` passed, alive and
    // not otherwise used during the call.
    let search = unsafe { &mut *data.cast::<Search>() };
    // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the
    // callback.
    let info = unsafe { &*info };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points to the object's `dlpi_phnum` program headers,
    // which stay mapped while the object is loaded (at least for this call).
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let bias = info.dlpi_addr as usize;
    let span = |vaddr: usize, len: usize| {
        let start = bias.wrapping_add(vaddr);
        start..start.saturating_add(len)
    };
    let loads = || headers.iter().filter(|h| h.p_type == PT_LOAD);
    if !loads().any(|h| span(h.p_vaddr as usize, h.p_memsz as usize).contains(&search.probe)) {
        return 0;
    }
    let code = loads()
        .filter(|h| h.p_flags & PF_X != 0)
        .map(|h| span(h.p_vaddr as usize, h.p_memsz as usize))
        .collect();
    let mut build_id = None;
    for note in headers.iter().filter(|h| h.p_type == PT_NOTE) {
        let notes = span(note.p_vaddr as usize, note.p_filesz as usize);
        // Read a note segment only where a readable, file-backed part of a
        // loaded segment covers it: then its bytes are mapped.
        let mapped = loads().filter(|h| h.p_flags & PF_R != 0).any(|h| {
            let load = span(h.p_vaddr as usize, h.p_filesz as usize);
            load.start <= notes.start && notes.end <= load.end
        });
        if !mapped || notes.is_empty() {
            continue;
        }
        // SAFETY: `notes` lies inside a readable segment the loader mapped from
        // the file, which stays mapped while the object is loaded, and nothing
        // writes to it (it is not a writable segment's `.bss` part: only
        // `p_filesz` counts).
        let bytes = unsafe { std::slice::from_raw_parts(notes.start as *const u8, notes.len()) };
        let Ok(mut iter) = NoteIterator::<Elf>::new(NativeEndian, note.p_align, bytes) else {
            continue;
        };
        while let Ok(Some(note)) = iter.next() {
            if note.name() == ELF_NOTE_GNU && note.n_type(NativeEndian) == NT_GNU_BUILD_ID {
                build_id = Some(note.desc().to_vec());
            }
        }
    }
    let path = if info.dlpi_name.is_null() {
        None
    } else {
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the
        // loader, valid during the callback; it is copied out.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) };
        (!name.is_empty()).then(|| {
            use std::os::unix::ffi::OsStrExt;
            PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()))
        })
    };
    search.found = Some(Found {
        bias,
        code,
        build_id,
        path,
    });
    1
}

#[cfg(test)]
mod tests {
    use super::Image;

    fn sample(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn a_function_of_this_program_has_an_offset_that_leads_back_to_it() {
        let image = Image::get().unwrap();
        let f = sample as fn(u64) -> u64 as *const ();
        let offset = image.offset_of(f).expect("in the image");
        assert_eq!(image.code_at(offset), Some(f));
        assert!(!image.build.shown.is_empty());
    }

    #[test]
    fn addresses_outside_the_code_are_refused() {
        let image = Image::get().unwrap();
        let data = &image.bias as *const usize as *const ();
        assert_eq!(image.offset_of(data), None);
        assert_eq!(image.code_at(u64::MAX), None);
        let past_the_end = image.code.iter().map(|c| c.end).max().unwrap() - image.bias;
        assert_eq!(image.code_at(past_the_end as u64), None);
    }
}
