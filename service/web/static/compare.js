// Before / after comparison: the restored image sets the box, the input lies on top of it
// stretched to the same box (a ×4 SR input is shown upscaled to the output size by the
// browser) and clipped at the split, which the slider moves.

const MIN_WIDTH_PX = 320; // tiny test images are shown at least this wide

function load(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = url;
  });
}

const size = (img) => `${img.naturalWidth}×${img.naturalHeight}`;

/** Shows `container` with both images; resolves with their sizes ("W×H"), null if unknown. */
export async function showComparison(container, inputUrl, resultUrl) {
  const after = container.querySelector(".after");
  const before = container.querySelector(".before");
  const slider = container.querySelector(".slider");
  const [input, output] = await Promise.allSettled([load(before, inputUrl), load(after, resultUrl)]);
  if (output.status === "rejected") throw output.reason;
  const split = () => container.style.setProperty("--split", `${slider.value}%`);
  slider.addEventListener("input", split);
  split();
  container.style.setProperty("--width", `${Math.max(after.naturalWidth, MIN_WIDTH_PX)}px`);
  if (input.status === "rejected") {
    // e.g. a TIFF: the server reads it, the browser does not; show the result alone
    for (const part of container.querySelectorAll(".before, .divider, .label, .slider")) {
      part.hidden = true;
    }
  }
  container.hidden = false;
  return { in: input.status === "fulfilled" ? size(before) : "?", out: size(after) };
}
