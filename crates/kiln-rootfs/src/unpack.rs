//! What archive layers may unpack and what they did: the size caps that keep a decompression
//! bomb from exhausting memory, the meter that bounds a tar stream's headers, and the report
//! of entries kept or dropped by the layer policy.
//!
//! Every member's unpacked size is checked against the caps from its tar header before any
//! of its bytes are read, so a 16 GiB member is refused at once; headers themselves (long
//! names, PAX extensions, which the `tar` crate reads whole) are bounded by [`Meter`].

use std::{cell::Cell, fmt, io};

use kiln_types::escape_untrusted;

use crate::errors::MemberProblem;

const MIB: u64 = 1 << 20;

/// Caps on what archive layers unpack into one tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// The largest unpacked size of one member, in bytes.
    pub member_bytes: u64,
    /// The most bytes all archive layers of one tree may unpack together.
    pub total_bytes: u64,
}

impl UnpackLimits {
    /// The default per-member cap: 1 GiB.
    pub const DEFAULT_MEMBER_BYTES: u64 = 1024 * MIB;
    /// The default total cap when the image declares no size: 4 GiB.
    pub const DEFAULT_TOTAL_BYTES: u64 = 4096 * MIB;

    /// The defaults for an image of `image_bytes` (ext4 and qcow2 may declare a size): the
    /// total cap is the image's size (its contents cannot be larger), else 4 GiB; the member
    /// cap is 1 GiB, or the total cap when that is smaller.
    pub fn for_image(image_bytes: Option<u64>) -> Self {
        let total_bytes = image_bytes.unwrap_or(Self::DEFAULT_TOTAL_BYTES);
        UnpackLimits { member_bytes: Self::DEFAULT_MEMBER_BYTES.min(total_bytes), total_bytes }
    }
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self::for_image(None)
    }
}

/// What the archive layers of one tree have unpacked so far, against its [`UnpackLimits`].
/// Pass the same budget to every layer of a tree.
#[derive(Debug)]
pub struct UnpackBudget {
    limits: UnpackLimits,
    unpacked: u64,
    in_memory: u64,
}

/// Members smaller than this are held in memory while the budget's [`MEMORY_BYTES`] last;
/// every other member is streamed to a temporary file.
const SPILL_AT: u64 = MIB;
/// The most member bytes one tree holds in memory.
const MEMORY_BYTES: u64 = 64 * MIB;

impl UnpackBudget {
    /// A budget with nothing unpacked yet.
    pub fn new(limits: UnpackLimits) -> Self {
        UnpackBudget { limits, unpacked: 0, in_memory: 0 }
    }

    /// Bytes unpacked so far.
    pub fn unpacked(&self) -> u64 {
        self.unpacked
    }

    /// Checks a member's unpacked size against the per-member cap (every member, kept or not:
    /// skipping one still means decompressing it).
    pub(crate) fn check_member(&self, size: u64) -> Result<(), MemberProblem> {
        if size > self.limits.member_bytes {
            return Err(MemberProblem::TooLarge { size, limit: self.limits.member_bytes });
        }
        Ok(())
    }

    /// Whether a kept member of `size` bytes is held in memory (small, and memory left in the
    /// budget) rather than streamed to a temporary file.
    pub(crate) fn hold_in_memory(&mut self, size: u64) -> bool {
        let fits = size < SPILL_AT && self.in_memory + size <= MEMORY_BYTES;
        if fits {
            self.in_memory += size;
        }
        fits
    }

    /// Takes `size` bytes of a kept member from the total.
    pub(crate) fn take(&mut self, size: u64) -> Result<(), MemberProblem> {
        let total = self.unpacked.saturating_add(size);
        if total > self.limits.total_bytes {
            return Err(MemberProblem::TotalTooLarge { size, unpacked: self.unpacked, limit: self.limits.total_bytes });
        }
        self.unpacked = total;
        Ok(())
    }
}

/// How many header bytes (a member's header blocks, GNU long names, PAX extensions) a tar
/// stream may carry before each member's data.
pub(crate) const HEADER_ALLOWANCE: u64 = MIB;

/// Counts the bytes a tar reader takes from a decompressed stream and refuses any beyond what
/// was granted: [`HEADER_ALLOWANCE`] for headers, plus each admitted member's data.
#[derive(Debug)]
pub(crate) struct Meter {
    read: Cell<u64>,
    allowed: Cell<u64>,
}

impl Meter {
    pub(crate) fn new() -> Self {
        Meter { read: Cell::new(0), allowed: Cell::new(HEADER_ALLOWANCE) }
    }

    /// Allows the data of a member of `size` bytes (padded to tar's 512-byte blocks) that
    /// starts here, and a fresh header allowance after it.
    pub(crate) fn grant(&self, size: u64) {
        let padded = size.div_ceil(512).saturating_mul(512);
        self.allowed.set(self.read.get().saturating_add(padded).saturating_add(HEADER_ALLOWANCE));
    }

    /// `r` read through this meter.
    pub(crate) fn reader<R: io::Read>(&self, inner: R) -> Metered<'_, R> {
        Metered { inner, meter: self }
    }
}

/// A reader whose bytes a [`Meter`] counts and bounds.
pub(crate) struct Metered<'m, R> {
    inner: R,
    meter: &'m Meter,
}

impl<R: io::Read> io::Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.meter.allowed.get().saturating_sub(self.meter.read.get());
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::other(HeadersTooLarge));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.meter.read.set(self.meter.read.get() + n as u64);
        Ok(n)
    }
}

/// The meter's refusal: headers larger than [`HEADER_ALLOWANCE`].
#[derive(Debug)]
struct HeadersTooLarge;

impl fmt::Display for HeadersTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a member's headers (long name or PAX extension) are larger than {} MiB", HEADER_ALLOWANCE / MIB)
    }
}

impl std::error::Error for HeadersTooLarge {}

/// What the layer policy did with one archive's special entries, for the one line kiln
/// prints. Paths are rootfs paths as they came from the archive (escaped when shown).
///
/// The policy: setuid and setgid bits on files are kept when the archive gives the file to
/// root (uid 0 for setuid, gid 0 for setgid) and cleared otherwise, because images are owned
/// by root throughout and a bit meant for another user would become root's; character
/// devices are kept (the kernel opens `/dev/console` before any init runs); block devices
/// and fifos are dropped (a guest's `/dev` is a devtmpfs its own kernel fills, and fifos are
/// made at run time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerReport {
    /// Files kept with their setuid bit (owned by root in the archive).
    pub kept_setuid: Vec<String>,
    /// Files kept with their setgid bit (group root in the archive).
    pub kept_setgid: Vec<String>,
    /// Files whose setuid or setgid bit was cleared (owner or group not root in the archive).
    pub cleared_set_id: Vec<String>,
    /// Character devices kept.
    pub kept_char_devices: Vec<String>,
    /// Block devices dropped.
    pub dropped_block_devices: Vec<String>,
    /// Fifos dropped.
    pub dropped_fifos: Vec<String>,
}

impl LayerReport {
    /// Whether the layer had nothing special to report.
    pub fn is_empty(&self) -> bool {
        self == &LayerReport::default()
    }

    /// Adds another report's entries (a .deb's data layer into the package's report).
    pub(crate) fn merge(&mut self, other: LayerReport) {
        self.kept_setuid.extend(other.kept_setuid);
        self.kept_setgid.extend(other.kept_setgid);
        self.cleared_set_id.extend(other.cleared_set_id);
        self.kept_char_devices.extend(other.kept_char_devices);
        self.dropped_block_devices.extend(other.dropped_block_devices);
        self.dropped_fifos.extend(other.dropped_fifos);
    }
}

impl fmt::Display for LayerReport {
    /// `dropped 2 block devices (/dev/sda, /dev/sdb), 1 fifo (/run/x); kept setuid on /bin/su`,
    /// at most three paths per group; empty when there is nothing to say.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: [(&str, &str, &str, &[String]); 6] = [
            ("dropped", "block device", "block devices", &self.dropped_block_devices),
            ("dropped", "fifo", "fifos", &self.dropped_fifos),
            ("kept", "character device", "character devices", &self.kept_char_devices),
            ("kept setuid on", "file", "files", &self.kept_setuid),
            ("kept setgid on", "file", "files", &self.kept_setgid),
            ("cleared setuid/setgid (owner not root in the archive) on", "file", "files", &self.cleared_set_id),
        ];
        let mut clauses: Vec<(&str, String)> = Vec::new();
        for (verb, one, many, paths) in groups {
            if paths.is_empty() {
                continue;
            }
            let mut shown: Vec<String> = paths.iter().take(3).map(|p| escape_untrusted(p).into_owned()).collect();
            if paths.len() > 3 {
                shown.push(format!("and {} more", paths.len() - 3));
            }
            let noun = if paths.len() == 1 { one } else { many };
            clauses.push((verb, format!("{} {noun} ({})", paths.len(), shown.join(", "))));
        }
        // One verb for consecutive clauses that share it: "dropped 2 block devices (...), 1 fifo (...)".
        let mut previous = "";
        for (index, (verb, clause)) in clauses.iter().enumerate() {
            if *verb == previous {
                write!(f, ", {clause}")?;
            } else {
                if index > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{verb} {clause}")?;
            }
            previous = verb;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn limits_follow_the_image_size() {
        assert_eq!(
            UnpackLimits::default(),
            UnpackLimits { member_bytes: 1 << 30, total_bytes: 4 << 30 },
            "defaults: 1 GiB per member, 4 GiB in all"
        );
        assert_eq!(
            UnpackLimits::for_image(Some(64 * MIB)),
            UnpackLimits { member_bytes: 64 * MIB, total_bytes: 64 * MIB }
        );
    }

    #[test]
    fn the_budget_counts_across_layers() {
        let mut budget = UnpackBudget::new(UnpackLimits { member_bytes: 10, total_bytes: 15 });
        assert!(budget.check_member(10).is_ok());
        let too_large = budget.check_member(11).expect_err("over the member cap").to_string();
        assert_eq!(too_large, "unpacks to 11 bytes, more than the 10 bytes allowed for one member");
        budget.take(10).expect("first");
        let total = budget.take(6).expect_err("over the total").to_string();
        assert!(total.contains("16 bytes in all"), "{total}");
        assert_eq!(budget.unpacked(), 10);
    }

    #[test]
    fn the_meter_refuses_ungranted_bytes() {
        let meter = Meter::new();
        let data = vec![7u8; usize::try_from(HEADER_ALLOWANCE).expect("usize") + 1024];
        let mut reader = meter.reader(&data[..]);
        let mut sink = Vec::new();
        let err = reader.read_to_end(&mut sink).expect_err("beyond the allowance");
        assert!(err.get_ref().is_some_and(|inner| inner.is::<HeadersTooLarge>()), "{err}");
        assert_eq!(sink.len() as u64, HEADER_ALLOWANCE);
        meter.grant(1000);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("granted");
        assert_eq!(rest.len(), 1024);
    }

    #[test]
    fn the_report_is_one_line() {
        let report = LayerReport {
            dropped_block_devices: vec!["/dev/sda".into(), "/dev/sdb".into()],
            dropped_fifos: vec!["/run/initctl".into()],
            kept_setuid: vec!["/bin/su".into(), "/bin/mount".into(), "/bin/umount".into(), "/usr/bin/passwd".into()],
            cleared_set_id: vec!["/usr/bin/\u{1b}[2Jchage".into()],
            ..LayerReport::default()
        };
        assert_eq!(
            report.to_string(),
            "dropped 2 block devices (/dev/sda, /dev/sdb), 1 fifo (/run/initctl); \
             kept setuid on 4 files (/bin/su, /bin/mount, /bin/umount, and 1 more); \
             cleared setuid/setgid (owner not root in the archive) on 1 file (/usr/bin/\\x1b[2Jchage)"
        );
        assert!(LayerReport::default().is_empty());
        assert_eq!(LayerReport::default().to_string(), "");
    }
}
