// A zip archive of stored (uncompressed) entries, built in the browser.
//
// Restored images are PNG, JPEG or WebP: already compressed, so deflate would gain almost
// nothing, and STORE keeps the writer small enough to carry no library. Layout (APPNOTE 6.3):
// per entry a local header, the name and the bytes; then the central directory; then the end
// record. Names are UTF-8 (flag bit 11). No zip64: an archive stops at 65535 entries and 4 GiB.

const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3, the one zip uses) of a Uint8Array, as an unsigned number. */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const UTF8 = 0x0800;
const VERSION = 20; // 2.0: the least a reader needs for stored entries and directories
const LIMIT = 0xffffffff;

function dosTime(date) {
  const time = (date.getHours() << 11) | (date.getMinutes() << 5) | (date.getSeconds() >> 1);
  const year = Math.min(Math.max(date.getFullYear(), 1980), 2107);
  const day = ((year - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate();
  return [time, day];
}

/**
 * A Blob (application/zip) holding `entries`, each `{name, data}` with `data` a Uint8Array.
 * Names must be unique; `/` separates folders.
 */
export function zipStore(entries, date = new Date()) {
  if (entries.length > 0xffff) throw new RangeError("more than 65535 files: zip64 is not written");
  const encoder = new TextEncoder();
  const [time, day] = dosTime(date);
  const body = [];
  const directory = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const nameBytes = encoder.encode(name);
    const crc = crc32(data);
    if (data.length >= LIMIT || offset + 30 + nameBytes.length + data.length >= LIMIT) {
      throw new RangeError("archive over 4 GiB: zip64 is not written");
    }
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); // local file header signature
    local.setUint16(4, VERSION, true);
    local.setUint16(6, UTF8, true);
    local.setUint16(8, 0, true); // method 0: stored
    local.setUint16(10, time, true);
    local.setUint16(12, day, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true); // compressed size
    local.setUint32(22, data.length, true); // uncompressed size
    local.setUint16(26, nameBytes.length, true);
    local.setUint16(28, 0, true); // extra field length
    body.push(local, nameBytes, data);

    const central = new DataView(new ArrayBuffer(46));
    central.setUint32(0, 0x02014b50, true); // central directory header signature
    central.setUint16(4, VERSION, true); // made by (MS-DOS attributes)
    central.setUint16(6, VERSION, true); // needed to extract
    central.setUint16(8, UTF8, true);
    central.setUint16(10, 0, true);
    central.setUint16(12, time, true);
    central.setUint16(14, day, true);
    central.setUint32(16, crc, true);
    central.setUint32(20, data.length, true);
    central.setUint32(24, data.length, true);
    central.setUint16(28, nameBytes.length, true);
    // extra and comment lengths, disk number, internal and external attributes: all 0
    central.setUint32(42, offset, true); // where the local header starts
    directory.push(central, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const directorySize = directory.reduce((n, part) => n + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); // end of central directory signature
  end.setUint16(8, entries.length, true); // entries on this disk
  end.setUint16(10, entries.length, true); // entries in all
  end.setUint32(12, directorySize, true);
  end.setUint32(16, offset, true); // where the directory starts
  return new Blob([...body, ...directory, end], { type: "application/zip" });
}
