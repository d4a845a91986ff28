//! Artifact writers: from an assembled root filesystem to the files of a store
//! entry (iPXE bundle, raw/qcow2/VHD disks, rootfs tarball). Every identifier
//! an image carries (filesystem and partition UUIDs, FAT serial, VHD UUID) is
//! derived from the input hash, and every timestamp is the recipe's epoch.

pub mod compress;
pub mod cpio;
pub mod disk;
mod error;
pub mod esp;
pub mod ext4;
pub mod ext4_inodes;
pub mod initramfs;
pub mod sbom;
pub mod tarball;
pub mod uki;

use crate::config::recipe::Recipe;
use crate::fsutil::IoAt;
use crate::model::{Arch, Artifact, ArtifactFile, ArtifactName, Blake3, EntryName, Firmware, Format, InputHash};
use crate::progress::Progress;
use crate::rootfs::Rootfs;
pub use error::ArtifactError;
use error::Result;
use std::path::Path;

/// The iPXE script template, built into the binary (and into the input hash).
pub(crate) const IPXE_TEMPLATE: &str = include_str!("../../pxe/boot.ipxe");

/// A 16-byte identifier derived from the input hash and a purpose, shaped as
/// an RFC 4122 version-4 UUID so tools accept it.
pub(crate) fn derived_id(hash: &InputHash, purpose: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{hash}:{purpose}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

pub(crate) fn uuid_string(id: [u8; 16]) -> String {
    let h = hex::encode(id);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn root_partition_type(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        Arch::Aarch64 => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    }
}

/// Where [`produce`] writes.
pub(crate) struct Places<'a> {
    /// The entry being built: the artifacts.
    pub out: &'a Path,
    /// Intermediate files.
    pub work: &'a Path,
    /// Compressed tarball segments kept between builds.
    pub tar_frames: Option<&'a tarball::FrameCache>,
}

/// What the steps of [`produce`] made so far: each file with its kind, in a
/// fixed order, and the digests known without reading a file again (the VHD
/// is the raw disk plus a footer, so its digest continues the raw disk's).
#[derive(Default)]
struct Made {
    files: Vec<(ArtifactName, Format, String)>,
    known: std::collections::BTreeMap<String, Blake3>,
}

impl Made {
    fn add(&mut self, name: ArtifactName, format: Format, file: &str) {
        self.files.push((name, format, file.to_string()));
    }

    fn add_hashed(&mut self, name: ArtifactName, format: Format, file: &str, digest: Blake3) {
        self.known.insert(file.to_string(), digest);
        self.add(name, format, file);
    }

    /// The manifest's artifacts: each file's size, and its digest (hashed now
    /// unless a step already knew it).
    fn into_artifacts(mut self, out: &Path) -> Result<Vec<Artifact>> {
        let mut artifacts = Vec::new();
        for (name, format, file) in self.files {
            let p = out.join(&file);
            artifacts.push(Artifact {
                size: std::fs::metadata(&p)?.len(),
                blake3: match self.known.remove(&file) {
                    Some(d) => d,
                    None => Blake3::of_file(&p)?,
                },
                name,
                format,
                file: ArtifactFile::new(&file)?,
            });
        }
        Ok(artifacts)
    }
}

/// What every step of a build's artifacts reads.
#[derive(Clone, Copy)]
struct Job<'a> {
    recipe: &'a Recipe,
    rootfs: &'a Rootfs,
    hash: &'a InputHash,
    out: &'a Path,
    work: &'a Path,
    progress: &'a Progress,
}

impl Job<'_> {
    fn has(&self, f: Format) -> bool {
        self.recipe.formats.contains(&f)
    }
}

/// Writes every format of `recipe` into `places.out`. Returns the artifacts
/// in a fixed order.
pub(crate) fn produce(
    recipe: &Recipe,
    rootfs: &Rootfs,
    hash: &InputHash,
    entry: &EntryName,
    places: Places<'_>,
    progress: &Progress,
) -> Result<Vec<Artifact>> {
    let Places { out, work, tar_frames } = places;
    let job = Job { recipe, rootfs, hash, out, work, progress };
    let mut made = Made::default();
    if job.has(Format::Ipxe) {
        ipxe_bundle(job, entry, &mut made)?;
    }
    if job.has(Format::Uki) {
        uki_artifact(job, &mut made)?;
    }
    disks_and_tarball(job, tar_frames, &mut made)?;
    if let crate::config::recipe::Base::Debian(base) = &recipe.base {
        if let Some(lock) = &base.lock {
            let status = rootfs.tree.read(sbom::DPKG_STATUS).map_err(error::input("reading", &sbom::DPKG_STATUS))?;
            let installed = sbom::installed(&String::from_utf8_lossy(&status), lock)?;
            let doc = sbom::document(entry, &recipe.name, hash, recipe.epoch, lock, &installed);
            let json = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::from);
            json.and_then(|j| std::fs::write(out.join(sbom::FILE), j)).at("writing", out.join(sbom::FILE))?;
            made.add(ArtifactName::Sbom, Format::Sbom, sbom::FILE);
        }
    }
    made.into_artifacts(out)
}

/// The iPXE bundle: kernel, initrd (the whole root filesystem), boot.ipxe.
fn ipxe_bundle(job: Job<'_>, entry: &EntryName, made: &mut Made) -> Result<()> {
    let Job { recipe, rootfs, hash, out, progress, .. } = job;
    let step = progress.step("ipxe: kernel, initrd (whole root filesystem), boot.ipxe");
    std::fs::copy(&rootfs.kernel.image, out.join("vmlinuz")).at("copying the kernel to", out.join("vmlinuz"))?;
    cpio::write_initrd(&rootfs.tree, &out.join("initrd"), recipe.epoch).at("writing", out.join("initrd"))?;
    let script = IPXE_TEMPLATE
        .replace("{{entry}}", entry)
        .replace("{{profile}}", &recipe.name)
        .replace("{{hash}}", &hash[..12])
        .replace("{{cmdline}}", format!("rdinit=/init {}", recipe.cmdline).trim());
    std::fs::write(out.join("boot.ipxe"), script)?;
    made.add(ArtifactName::Kernel, Format::Ipxe, "vmlinuz");
    made.add(ArtifactName::Initrd, Format::Ipxe, "initrd");
    made.add(ArtifactName::Script, Format::Ipxe, "boot.ipxe");
    step.done();
    Ok(())
}

/// The unified kernel image: EFI stub + kernel + initrd + command line.
fn uki_artifact(job: Job<'_>, made: &mut Made) -> Result<()> {
    let Job { recipe, rootfs, hash, out, work, progress } = job;
    let step = progress.step("uki: EFI stub + kernel + initrd (whole root filesystem) + command line");
    // The same initrd as the iPXE bundle's: reuse it when it was made.
    let initrd = if job.has(Format::Ipxe) { out.join("initrd") } else { work.join("uki-initrd") };
    if !job.has(Format::Ipxe) {
        cpio::write_initrd(&rootfs.tree, &initrd, recipe.epoch).at("writing", &initrd)?;
    }
    let cmdline = format!("rdinit=/init {}", recipe.cmdline);
    let uki_file = format!("{}.efi", recipe.name);
    write_uki(recipe, rootfs, hash, &initrd, &cmdline, work, &out.join(&uki_file))?;
    made.add(ArtifactName::Uki, Format::Uki, &uki_file);
    step.done();
    Ok(())
}

/// The raw disk (in `out` when it is wanted, else in `work` for the other
/// disk formats): GPT, the ESP, and the ext4 root filesystem made in place.
fn raw_disk(job: Job<'_>) -> Result<std::path::PathBuf> {
    let Job { recipe, rootfs, hash, out, work, progress } = job;
    let root_uuid = uuid_string(derived_id(hash, "ext4-uuid"));
    let bios = recipe.firmware == Firmware::Bios;
    let overhead = disk::Layout::overhead(bios);
    let root_size = match recipe.disk.size {
        Some(total) => {
            let min = overhead + recipe.disk.esp_size + 16 * disk::MIB;
            if total < min {
                return Err(ArtifactError::Disk(format!("disk.size {total} is too small: at least {min} bytes")));
            }
            total - overhead - recipe.disk.esp_size
        }
        None => auto_root_size(rootfs, recipe.disk.free),
    };
    let layout = disk::Layout::new(root_size + recipe.disk.esp_size + overhead, recipe.disk.esp_size, bios);

    let step = progress.background_step("disk: GPT raw image, ext4 root filesystem made in place");
    let raw = if job.has(Format::Raw) { out.join("disk.raw") } else { work.join("disk.raw") };
    let (d, e, r) = (
        uuid_string(derived_id(hash, "gpt-disk")),
        uuid_string(derived_id(hash, "gpt-esp")),
        uuid_string(derived_id(hash, "gpt-root")),
    );
    let b = uuid_string(derived_id(hash, "gpt-bios"));
    let ids = disk::GptIds { disk: &d, bios: &b, esp: &e, root: &r, root_type: root_partition_type(recipe.arch) };
    let seed = uuid_string(derived_id(hash, "ext4-hash-seed"));
    let params =
        ext4::Ext4Params { uuid: &root_uuid, hash_seed: &seed, label: &recipe.disk.root_label, epoch: recipe.epoch };
    // The root filesystem does not depend on the ESP (its size is fixed):
    // mkfs.ext4, the longest step, runs while the initramfs and the ESP
    // are made.
    let make_esp = || esp_image(recipe, rootfs, hash, work, layout.esp_size, &root_uuid, progress);
    disk::assemble_raw(&raw, &layout, &ids, make_esp, |disk, offset, size| {
        ext4::make(&rootfs.tree, disk, ext4::Region { offset, size }, &params, work)
    })?;
    std::fs::remove_file(work.join("esp.img"))?;
    step.done();
    Ok(raw)
}

/// The tarball is written (and hashed as it is written) beside the disk
/// images; once the raw disk is made, the qcow2 and the VHD are made from
/// it side by side while it is hashed. Each file goes to disk while it is
/// written (fsutil::Flusher), so the commit's fsync finds little to do.
fn disks_and_tarball(job: Job<'_>, tar_frames: Option<&tarball::FrameCache>, made: &mut Made) -> Result<()> {
    let any_disk = job.recipe.formats.iter().any(|f| f.is_disk());
    std::thread::scope(|s| -> Result<()> {
        let tar = job.has(Format::Tar).then(|| {
            s.spawn(|| -> Result<Blake3> {
                let step = job.progress.background_step("tar: rootfs.tar.zst");
                // One compressor beside the disk images (whose mkfs and hashing
                // are the longer path), every core when it is the only format.
                let workers = if any_disk { 1 } else { compress::cores() };
                let out = job.out.join("rootfs.tar.zst");
                let digest = tarball::write(&job.rootfs.tree, &out, job.recipe.epoch, workers, tar_frames)?;
                step.done();
                Ok(digest)
            })
        });
        if any_disk {
            let raw = raw_disk(job)?;
            if job.has(Format::Raw) {
                made.add(ArtifactName::Disk, Format::Raw, "disk.raw");
            }
            disks_from_raw(job, s, &raw, made)?;
        }
        if let Some(tar) = tar {
            made.add_hashed(ArtifactName::Rootfs, Format::Tar, "rootfs.tar.zst", joined(tar, "writing the tarball")?);
        }
        Ok(())
    })
}

/// The qcow2 and the VHD, made from the raw disk while it is hashed.
fn disks_from_raw<'s>(job: Job<'s>, s: &'s std::thread::Scope<'s, '_>, raw: &Path, made: &mut Made) -> Result<()> {
    let raw_hash = s.spawn({
        let raw = raw.to_path_buf();
        move || crate::hash::ArtifactDigest::of_sparse_file(&raw)
    });
    let qcow2 = job.has(Format::Qcow2).then(|| {
        let raw = raw.to_path_buf();
        s.spawn(move || -> Result<Blake3> {
            let step = job.progress.background_step("disk: qcow2");
            let qcow2 = job.out.join("disk.qcow2");
            let t0 = std::time::Instant::now();
            disk::to_qcow2(&raw, &qcow2)?;
            let t1 = std::time::Instant::now();
            let digest = Blake3::of_file(&qcow2)?;
            tracing::debug!(convert = ?(t1 - t0), digest = ?t1.elapsed(), "qcow2 made");
            step.done();
            Ok(digest)
        })
    });
    let footer = if job.has(Format::Vhd) {
        let step = job.progress.step("disk: fixed VHD");
        let id = derived_id(job.hash, "vhd-uuid");
        let footer = disk::to_vhd(raw, &job.out.join("disk.vhd"), job.recipe.epoch, id)?;
        step.done();
        Some(footer)
    } else {
        None
    };
    if let Some(h) = qcow2 {
        made.add_hashed(ArtifactName::Disk, Format::Qcow2, "disk.qcow2", joined(h, "making the qcow2")?);
    }
    let step = job.progress.step("disk: checksums");
    let raw_state = joined(raw_hash, "hashing the raw disk")?;
    if job.has(Format::Raw) {
        made.known.insert("disk.raw".into(), raw_state.finish().into());
    }
    if let Some(footer) = footer {
        // The VHD is the raw disk plus a footer: its digest continues the raw disk's.
        let mut state = raw_state;
        state.update(&footer);
        made.add_hashed(ArtifactName::Disk, Format::Vhd, "disk.vhd", state.finish().into());
    }
    step.done();
    Ok(())
}

/// The ESP image (systemd-boot, its loader entry, the kernel and the disk's
/// initramfs; GRUB's configuration for BIOS layouts) in `work`, and GRUB's
/// boot images when the hardware boots by BIOS.
fn esp_image(
    recipe: &Recipe,
    rootfs: &Rootfs,
    hash: &InputHash,
    work: &Path,
    esp_size: u64,
    root_uuid: &str,
    progress: &Progress,
) -> Result<(std::path::PathBuf, Option<disk::GrubBios>)> {
    let step = progress.step("disk: initramfs");
    let initrd = work.join("disk-initrd");
    initramfs::write(recipe, rootfs, work, &initrd)?;
    step.done();

    let step = progress.step("disk: EFI system partition (systemd-boot)");
    let loader = work.join("esp-loader.efi");
    let efi = recipe.efi_loader.as_ref().ok_or(ArtifactError::Missing("no EFI loader"))?;
    let want = format!("/usr/lib/systemd/boot/efi/systemd-boot{}.efi", recipe.arch.efi_suffix());
    std::fs::write(&loader, systemd_efi_file(efi, &want, work)?)?;
    let options = format!("root=UUID={root_uuid} rw init={} {}", recipe.init, recipe.cmdline);
    let options = options.trim();
    let conf = work.join("loader.conf");
    let mut files = vec![
        esp::EspFile { dest: format!("EFI/BOOT/{}", recipe.arch.efi_boot_file()), src: loader },
        esp::EspFile { dest: "loader/loader.conf".into(), src: conf.clone() },
    ];
    if recipe.firmware == Firmware::Uefi {
        // A type #2 entry: one unified kernel image (kernel, this initramfs,
        // the root= command line), found by systemd-boot in EFI/Linux/.
        let uki_name = format!("{}.efi", recipe.name);
        let uki = work.join("esp-uki.efi");
        write_uki(recipe, rootfs, hash, &initrd, options, work, &uki)?;
        std::fs::write(&conf, format!("timeout 0\ndefault {uki_name}\n"))?;
        files.push(esp::EspFile { dest: format!("EFI/Linux/{uki_name}"), src: uki });
    } else {
        // GRUB (BIOS) reads the kernel and initramfs from the ESP itself;
        // systemd-boot's type #1 entry is for UEFI machines that boot the
        // same disk.
        let kernel_copy = work.join("esp-vmlinuz");
        std::fs::copy(&rootfs.kernel.image, &kernel_copy)?;
        std::fs::write(&conf, "timeout 0\ndefault imgd.conf\n")?;
        let entry_conf = work.join("imgd.conf");
        std::fs::write(
            &entry_conf,
            format!("title {}\nlinux /vmlinuz\ninitrd /initrd\noptions {options}\n", recipe.name),
        )?;
        files.push(esp::EspFile { dest: "loader/entries/imgd.conf".into(), src: entry_conf });
        files.push(esp::EspFile { dest: "vmlinuz".into(), src: kernel_copy });
        files.push(esp::EspFile { dest: "initrd".into(), src: initrd });
    }
    let id = derived_id(hash, "fat-serial");
    let serial = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    let esp_img = work.join("esp.img");
    let grub = match &recipe.grub_bios {
        Some(dir) => {
            let cfg = grub_config(recipe, serial, options);
            let core = grub_core(&dir.path, &cfg, work)?;
            let cfg_file = work.join("grub.cfg");
            std::fs::write(&cfg_file, &cfg)?;
            files.push(esp::EspFile { dest: "grub/grub.cfg".into(), src: cfg_file });
            Some(disk::GrubBios { boot_img: std::fs::read(dir.path.join("boot.img"))?, core_img: core })
        }
        None => None,
    };
    esp::make(&esp_img, esp_size, serial, &files, recipe.epoch)?;
    step.done();
    Ok((esp_img, grub))
}

/// A file of systemd-boot-efi: `input` itself, or, when it is the package
/// (another architecture's), the file at `want` inside it.
fn systemd_efi_file(input: &crate::config::recipe::Input, want: &str, work: &Path) -> Result<Vec<u8>> {
    if !input.name.ends_with(".deb") {
        return Ok(std::fs::read(&input.path).at("reading", &input.path)?);
    }
    let dir = tempfile::tempdir_in(work)?;
    let mut t = crate::rootfs::tree::Tree::new(&dir.path().join("deb"))?;
    t.extract_deb(&input.path).map_err(error::input("unpacking", &input.name))?;
    let missing = || error::input("reading", &format_args!("{} from {}", want, input.name));
    let rel = t.resolve(want, true).map_err(missing())?;
    std::fs::read(t.staged(&rel)).map_err(missing())
}

/// A unified kernel image: systemd's stub + the kernel, `initrd`, `cmdline`
/// and the image's os-release, written to `out`.
fn write_uki(
    recipe: &Recipe,
    rootfs: &Rootfs,
    hash: &InputHash,
    initrd: &Path,
    cmdline: &str,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let stub_input = recipe.efi_stub.as_ref().ok_or(ArtifactError::Missing("no EFI stub"))?;
    let want = format!("/usr/lib/systemd/boot/efi/linux{}.efi.stub", recipe.arch.efi_suffix());
    let stub = systemd_efi_file(stub_input, &want, work)?;
    let image_os_release = ["/etc/os-release", "/usr/lib/os-release"].iter().find_map(|p| {
        let rel = rootfs.tree.resolve(p, true).ok()?;
        std::fs::read_to_string(rootfs.tree.staged(&rel)).ok()
    });
    let osrel = uki::os_release(image_os_release.as_deref(), &recipe.name, hash);
    let sections = uki::sections(osrel, cmdline.trim(), &rootfs.kernel.image, initrd);
    uki::write(&stub, &sections, out)
        .map_err(|e| e.within(format!("writing the unified kernel image {}", out.display())))?;
    Ok(())
}

/// The result of a scoped thread; a panic in it becomes an error naming `what`.
fn joined<T, E: Into<ArtifactError>>(h: std::thread::ScopedJoinHandle<'_, Result<T, E>>, what: &str) -> Result<T> {
    h.join().map_err(|_| ArtifactError::Panicked(what.to_string()))?.map_err(Into::into)
}

/// Root filesystem size when the profile gives none: content, a block per
/// inode, ext4 metadata and journal, plus the requested free space; whole MiB.
fn auto_root_size(rootfs: &Rootfs, free: u64) -> u64 {
    let content = rootfs.tree.content_bytes();
    let inodes = rootfs.tree.len() as u64 * 4096;
    let raw = content + content / 10 + inodes + 64 * disk::MIB + free;
    raw.div_ceil(disk::MIB) * disk::MIB
}

/// GRUB's configuration for BIOS boots: serial console as the hardware says,
/// the ESP found by its FAT serial (whatever the BIOS numbers the disk), then
/// the same kernel, initramfs and command line systemd-boot uses.
fn grub_config(recipe: &Recipe, serial: u32, options: &str) -> String {
    let console = recipe.cmdline.split_whitespace().find_map(|a| a.strip_prefix("console=ttyS")).unwrap_or("0,115200");
    let (unit, speed) = console.split_once(',').unwrap_or((console, "115200"));
    let speed: String = speed.chars().take_while(|c| c.is_ascii_digit()).collect();
    format!(
        "serial --unit={unit} --speed={speed}\nterminal_input serial console\nterminal_output serial console\n\
         search --no-floppy --fs-uuid --set=root {:04X}-{:04X}\n\
         echo \"imgd: booting {} with GRUB (BIOS)\"\n\
         linux /vmlinuz {options}\ninitrd /initrd\nboot\n",
        serial >> 16,
        serial & 0xffff,
        recipe.name
    )
}

/// GRUB's core image with the config built in (no modules needed on disk).
fn grub_core(dir: &Path, config: &str, work: &Path) -> Result<Vec<u8>> {
    let early = work.join("grub-early.cfg");
    std::fs::write(&early, config)?;
    let out = work.join("core.img");
    crate::tools::run(
        std::process::Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-p", "/grub", "-d"])
            .arg(dir)
            .arg("-c")
            .arg(&early)
            .arg("-o")
            .arg(&out)
            .args([
                "biosdisk",
                "part_gpt",
                "fat",
                "search",
                "search_fs_uuid",
                "normal",
                "linux",
                "serial",
                "terminal",
                "echo",
            ]),
    )?;
    Ok(std::fs::read(&out)?)
}
