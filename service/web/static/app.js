// The page: pick a task, drop images, follow each job, compare, download.
//
// Every image is one job (POST v1/jobs) followed to its end by api.followJob; the result is
// held as a Blob so it can be compared, downloaded alone or zipped with the others. All text
// from files and the server goes through textContent, never markup.

import {
  ApiError, apiKey, cancelJob, fetchResult, followJob, getTasks, setApiKey, submitJob,
} from "./api.js";
import { showComparison } from "./compare.js";
import { zipStore } from "./zip.js";

const $ = (selector, root = document) => root.querySelector(selector);
const ui = {
  task: $("#task"),
  taskInfo: $("#task-info"),
  diffusion: $("#diffusion-options"),
  steps: $("#steps"),
  seed: $("#seed"),
  keyBox: $("#key-box"),
  key: $("#api-key"),
  forgetKey: $("#forget-key"),
  drop: $("#drop"),
  files: $("#files"),
  status: $("#status"),
  toolbar: $("#toolbar"),
  zipAll: $("#zip-all"),
  clear: $("#clear"),
  results: $("#results"),
  card: $("#card"),
};
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
let tasks = new Map();
const items = [];
let tasksTimer = null;

function say(text, bad = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("bad", bad);
}

function describe(error) {
  return error instanceof ApiError ? error.describe() : String(error?.message || error);
}

// --- tasks ------------------------------------------------------------------------------

function kindLabel(task) {
  const scale = task.scale > 1 ? ` ×${task.scale}` : "";
  return `${task.kind.replaceAll("_", " ")}${scale}`;
}

function showTask() {
  const task = tasks.get(ui.task.value);
  if (!task) return;
  const parts = [kindLabel(task), `output ×${task.scale} per side`,
    `${(task.parameters / 1e6).toFixed(2)} M parameters`, task.arch];
  if (!task.steps_ignored) parts.push(`${task.default_steps} steps by default`);
  if (task.card?.description) parts.push(task.card.description);
  ui.taskInfo.textContent = parts.join(" · ");
  ui.diffusion.hidden = task.steps_ignored;
  ui.steps.placeholder = task.steps_ignored ? "" : String(task.default_steps);
}

async function loadTasks() {
  clearTimeout(tasksTimer);
  let answer;
  try {
    answer = await getTasks();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      ui.keyBox.open = true;
      say(`This server needs an API key: enter it under “API key”. ${error.detail}`, true);
      if (apiKey()) ui.key.focus();
    } else {
      say(`Could not list the tasks: ${describe(error)}`, true);
      tasksTimer = setTimeout(loadTasks, 5000);
    }
    return;
  }
  const previous = ui.task.value;
  tasks = new Map(answer.tasks.map((task) => [task.task, task]));
  ui.task.replaceChildren(...answer.tasks.map((task) => {
    const option = document.createElement("option");
    option.value = task.task;
    option.textContent = `${task.task} — ${kindLabel(task)}`;
    return option;
  }));
  if (tasks.has(previous)) ui.task.value = previous;
  ui.task.disabled = tasks.size === 0;
  showTask();
  if (!answer.ready) {
    say(tasks.size ? "Some models are still loading…" : "The models are loading…");
    tasksTimer = setTimeout(loadTasks, 2000);
  } else {
    say(tasks.size ? "" : "This server serves no task.", !tasks.size);
  }
}

// --- one image, one job -----------------------------------------------------------------

function numberOrNull(input) {
  const value = input.value.trim();
  return value === "" ? null : value;
}

function resultName(item, mediaType) {
  const stem = item.file.name.replace(/\.[^.]*$/, "") || "image";
  const base = `${stem}.${item.task}`;
  const ext = EXTENSIONS[mediaType] || "bin";
  let name = `${base}.${ext}`;
  for (let n = 2; items.some((other) => other !== item && other.resultName === name); n++) {
    name = `${base}-${n}.${ext}`;
  }
  return name;
}

function setState(card, state, label = state) {
  card.dataset.state = state;
  $(".state", card).textContent = label;
}

function showProgress(item, job) {
  const { card } = item;
  // "succeeded" is the card's state once the image is shown, not when the job says so
  if (job.state === "succeeded") setState(card, "fetching", "fetching the result");
  else setState(card, job.state);
  const p = job.progress || {};
  const bar = $(".bar", card);
  bar.value = job.state === "succeeded" ? 1 : p.fraction || 0;
  let text = "";
  if (job.state === "queued") text = "waiting for a free worker";
  else if (job.state === "running" && p.passes_total) {
    // rounds over all tiles: S sampling steps visit S + 1 timesteps
    const rounds = p.steps > 1 ? `round ${p.step}/${p.steps} · ` : "";
    text = `${rounds}${p.passes_done}/${p.passes_total} network passes · ${p.tiles} tile(s)`;
  }
  $(".progress-text", card).textContent = text;
}

function showError(item, text) {
  const error = $(".error", item.card);
  error.textContent = text;
  error.hidden = false;
  $(".cancel", item.card).hidden = true;
  if (!TERMINAL.has(item.card.dataset.state)) setState(item.card, "failed");
}

function seconds(value) {
  return `${Number(value).toFixed(2)} s`;
}

function showMeta(item, job, result, sizes) {
  const parts = [];
  if (result.seed !== null) parts.push(`seed ${result.seed}`);
  parts.push(result.steps !== null ? `${result.steps} steps` : "one pass");
  const t = job.timings || {};
  if (t.total_s !== undefined) {
    let time = `${seconds(t.total_s)}`;
    const detail = [];
    if (t.queued_s !== undefined) detail.push(`queued ${seconds(t.queued_s)}`);
    if (result.timing.compute !== undefined) {
      detail.push(`compute ${seconds(result.timing.compute / 1000)}`);
    }
    if (detail.length) time += ` (${detail.join(", ")})`;
    parts.push(time);
  }
  if (sizes) parts.push(`${sizes.in} → ${sizes.out}`);
  const meta = $(".meta", item.card);
  meta.textContent = parts.join(" · ");
  meta.dataset.seed = result.seed ?? "";
  meta.dataset.steps = result.steps ?? "";
}

async function run(item) {
  const task = tasks.get(item.task);
  const params = { task: item.task };
  if (task && !task.steps_ignored) {
    params.steps = numberOrNull(ui.steps);
    params.seed = numberOrNull(ui.seed);
  }
  try {
    const submitted = await submitJob(item.file, params);
    item.jobId = submitted.id;
    item.card.dataset.jobId = submitted.id;
    showProgress(item, submitted);
    const job = await followJob(submitted.id, (update) => showProgress(item, update));
    $(".cancel", item.card).hidden = true;
    if (job.state !== "succeeded") {
      const reason = job.error ? `${job.error.detail} (${job.error.error})` : job.state;
      showError(item, `Job ${job.state}: ${reason}`);
      return;
    }
    const result = await fetchResult(job.id);
    item.result = result.blob;
    item.resultName = resultName(item, result.blob.type);
    item.resultUrl = URL.createObjectURL(result.blob);
    const sizes = await showComparison($(".compare", item.card), item.inputUrl, item.resultUrl);
    showMeta(item, job, result, sizes);
    const link = $(".download", item.card);
    link.href = item.resultUrl;
    link.download = item.resultName;
    link.textContent = `Download ${item.resultName}`;
    link.hidden = false;
    setState(item.card, "succeeded");
  } catch (error) {
    showError(item, describe(error));
  } finally {
    updateToolbar();
  }
}

function addFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  if (!tasks.has(ui.task.value)) {
    say("No task to run yet: wait for the task list.", true);
    return;
  }
  say("");
  for (const file of files) {
    const card = ui.card.content.firstElementChild.cloneNode(true);
    const item = { file, card, task: ui.task.value, inputUrl: URL.createObjectURL(file) };
    $(".name", card).textContent = `${file.name} → ${item.task}`;
    $(".cancel", card).addEventListener("click", async () => {
      if (!item.jobId) return;
      try {
        await cancelJob(item.jobId);
      } catch (error) {
        if (!(error instanceof ApiError && error.code === "job_finished")) {
          showError(item, describe(error));
        }
      }
    });
    items.push(item);
    ui.results.prepend(card);
    run(item);
  }
  updateToolbar();
}

// --- toolbar ----------------------------------------------------------------------------

function updateToolbar() {
  ui.toolbar.hidden = items.length === 0;
  ui.zipAll.disabled = !items.some((item) => item.result);
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function zipAll() {
  const done = items.filter((item) => item.result);
  const entries = await Promise.all(done.map(async (item) => ({
    name: item.resultName,
    data: new Uint8Array(await item.result.arrayBuffer()),
  })));
  saveBlob(zipStore(entries), "restored.zip");
}

function clearFinished() {
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    if (!TERMINAL.has(item.card.dataset.state)) continue;
    URL.revokeObjectURL(item.inputUrl);
    if (item.resultUrl) URL.revokeObjectURL(item.resultUrl);
    item.card.remove();
    items.splice(i, 1);
  }
  updateToolbar();
}

// --- wiring -----------------------------------------------------------------------------

ui.task.addEventListener("change", showTask);
ui.files.addEventListener("change", () => {
  addFiles(ui.files.files);
  ui.files.value = ""; // choosing the same file again is a new job
});
// Files dropped anywhere on the page are taken (a drop the page ignored would make the
// browser leave it to show the image); the drop zone only marks where to aim.
for (const name of ["dragenter", "dragover"]) {
  window.addEventListener(name, (event) => {
    event.preventDefault();
    ui.drop.classList.toggle("over", ui.drop.contains(event.target));
  });
}
window.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) ui.drop.classList.remove("over"); // left the window
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  if (event.dataTransfer?.files.length) addFiles(event.dataTransfer.files);
});
ui.zipAll.addEventListener("click", () => zipAll().catch((error) => say(describe(error), true)));
ui.clear.addEventListener("click", clearFinished);
ui.key.value = apiKey();
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(ui.key.value.trim());
  loadTasks();
});
ui.forgetKey.addEventListener("click", () => {
  ui.key.value = "";
  setApiKey("");
  loadTasks();
});
if (apiKey()) ui.keyBox.open = true;
loadTasks();
