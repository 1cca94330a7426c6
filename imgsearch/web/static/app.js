// The imgsearch page: search, browse, tags, dates, places, cameras, lightbox and generate-if-missing over the JSON API.
// Plain ES module, no build step. Every piece of data reaches the DOM through textContent or an
// attribute, never innerHTML.

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const TOKEN = document.querySelector('meta[name="imgsearch-token"]')?.content ?? "";
// The server hands the token only to the browser that opened the URL `imgsearch serve` printed: without it this
// page browses and searches by text, and changes nothing (tags, generation, uploads).
const OWNER = TOKEN !== "";
const NOT_OWNER = "Open the URL `imgsearch serve` printed to change tags, generate or search by a picture.";
const params = new URLSearchParams(location.search);
const PAGE_SIZE = params.has("limit") ? clampInt(params.get("limit"), 1, 500, 40) : null; // null: the server's
const POLL_MS = 500;
const AUTOLOAD = "IntersectionObserver" in window; // infinite scroll; without it the Load more button pages

const ui = {
  form: $("search-form"), input: $("search-input"), imageButton: $("image-button"), file: $("image-input"),
  status: $("status"), tagList: $("tag-list"), tagFilter: $("tag-filter"), tagsEmpty: $("tags-empty"),
  context: $("context"), filters: $("active-filters"), error: $("error"), grid: $("grid"), empty: $("empty"),
  sentinel: $("sentinel"), loadMore: $("load-more"), loading: $("loading"), overlay: $("drop-overlay"),
  banner: $("generate-banner"), genTitle: $("generate-title"), genNote: $("generate-note"),
  genButton: $("generate-button"), genJob: $("generate-job"), genProgress: $("generate-progress"),
  genPhase: $("generate-phase"), genResult: $("generate-result"), genImage: $("generate-image"),
  genCaption: $("generate-caption"), genError: $("generate-error"),
  lb: $("lightbox"), lbImage: $("lightbox-image"), lbName: $("lightbox-name"), lbPath: $("lightbox-path"),
  lbMeta: $("lightbox-meta"), lbTags: $("lightbox-tags"), lbOpen: $("lightbox-open"), lbError: $("lightbox-error"),
  tagForm: $("tag-form"), tagInput: $("tag-input"), lbPhoto: $("lightbox-photo"),
  dateForm: $("date-range"), dateAfter: $("date-after"), dateBefore: $("date-before"), sortToggle: $("sort-toggle"),
  places: $("places"), placeList: $("place-list"), cameras: $("cameras"), cameraList: $("camera-list"),
  dupesButton: $("dupes-button"), lbCopies: $("lightbox-copies"), lbCopyList: $("lightbox-copy-list"),
};
const PHOTO_FILTERS = ["after", "before", "camera", "place", "sort"]; // the API's names, and the URL's
const SORTS = ["", "-date", "date"]; // relevance, newest taken first, oldest taken first: the toggle's cycle
const SORT_LABELS = { "": "Sort by date", "-date": "Newest first", date: "Oldest first" };

// mode: "browse" (the library, or filters alone), "text", "image" (by example), "similar" (more like this) or
// "dupes" (the groups of duplicates)
const state = {
  mode: "browse", q: "", tags: [], file: null, fileUrl: null, like: null,
  after: "", before: "", camera: "", place: "", sort: "", facets: { cameras: [], places: [] },
  hits: [], seen: new Set(), offset: 0, more: false, loading: false, gen: 0, abort: null,
  allTags: [], status: null, current: -1, shown: null, job: null,
};

function clampInt(text, lo, hi, fallback) {
  const n = Number.parseInt(text ?? "", 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}

// ---- helpers -------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

function errorText(data, res) {
  const detail = data?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg ?? String(d)).join("; ");
  return `${res.status} ${res.statusText || "error"}`;
}

async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, signal, headers: {} };
  if (method !== "GET") init.headers["X-Imgsearch-Token"] = TOKEN;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(errorText(data, res));
  return data;
}

function showError(node, message) {
  node.textContent = message ?? "";
  node.hidden = !message;
}

const fmtScore = (s) => (typeof s === "number" ? s.toFixed(3) : "");
const hasPhotoFilters = () => PHOTO_FILTERS.some((key) => state[key]);
const hasFilters = () => state.tags.length > 0 || hasPhotoFilters();

// A capture time as the camera's clock showed it (the API's local time, never converted to this browser's zone).
function fmtTaken(iso) {
  if (typeof iso !== "string" || iso.length < 16) return "";
  const zone = iso.slice(19);
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)}${zone ? ` (UTC${zone})` : ""}`;
}
const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;

function fmtBytes(n) {
  if (typeof n !== "number") return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---- status and tags -----------------------------------------------------------------------

async function loadStatus() {
  try {
    const s = await api("/api/status");
    state.status = s;
    const parts = [plural(s.images, "image"), s.model_id ?? "no model yet"];
    if (s.skipped) parts.push(`${s.skipped} skipped`);
    ui.status.textContent = parts.join(" · ");
    ui.status.title = `${s.home} · imgsearch ${s.version}`;
    ui.dupesButton.hidden = !s.copy_groups;
    ui.dupesButton.textContent = `Duplicates · ${plural(s.copy_groups, "group")}`;
  } catch (err) {
    ui.status.textContent = `status unavailable: ${err.message}`;
  }
}

async function loadTags() {
  try {
    state.allTags = await api("/api/tags");
  } catch (err) {
    state.allTags = [];
    showError(ui.error, err.message);
  }
  renderTags();
}

function renderTags() {
  const needle = ui.tagFilter.value.trim().toLowerCase();
  const shown = state.allTags.filter((t) => !needle || t.label.toLowerCase().includes(needle));
  ui.tagList.replaceChildren(...shown.map((t) => {
    const active = state.tags.includes(t.label);
    const kind = t.hand && !t.auto ? "hand" : t.hand ? "mixed" : "auto";
    return el("li", {}, el("button", {
      type: "button", class: `tag-chip ${kind}${active ? " active" : ""}`, "data-testid": "tag-chip",
      "data-label": t.label, "aria-pressed": String(active),
      title: `${plural(t.images, "image")}: ${t.hand} by hand, ${t.auto} automatic`,
      onclick: () => toggleTag(t.label),
    }, el("span", { class: "tag-label", text: t.label }), el("span", { class: "count", text: String(t.images) })));
  }));
  ui.tagsEmpty.hidden = state.allTags.length > 0;
}

function toggleTag(label) {
  state.tags = state.tags.includes(label) ? state.tags.filter((t) => t !== label) : [...state.tags, label];
  if (state.mode === "similar") state.mode = state.q ? "text" : "browse";
  renderTags();
  runSearch();
}

// ---- dates, places, cameras, sorting --------------------------------------------------------

async function loadFacets() {
  try {
    state.facets = await api("/api/facets");
  } catch {
    state.facets = { cameras: [], places: [] }; // the facets are a help; the page works without them
  }
  renderFacets();
}

function renderFacets() {
  for (const [kind, list, box] of [["place", ui.placeList, ui.places], ["camera", ui.cameraList, ui.cameras]]) {
    const values = state.facets[`${kind}s`] ?? [];
    list.replaceChildren(...values.map((v) => {
      const active = state[kind] === v.value;
      return el("li", {}, el("button", {
        type: "button", class: `tag-chip${active ? " active" : ""}`, "data-testid": `${kind}-chip`,
        "data-value": v.value, "aria-pressed": String(active), title: plural(v.images, "image"),
        onclick: () => setFilter(kind, active ? "" : v.value),
      }, el("span", { class: "tag-label", text: v.value }), el("span", { class: "count", text: String(v.images) })));
    }));
    box.hidden = values.length === 0;
  }
}

function setFilter(key, value) {
  state[key] = value;
  if (state.mode === "similar") state.mode = state.q ? "text" : "browse";
  ui.dateAfter.value = state.after;
  ui.dateBefore.value = state.before;
  renderFacets();
  renderSort();
  runSearch();
}

function renderSort() {
  ui.sortToggle.textContent = SORT_LABELS[state.sort] ?? SORT_LABELS[""];
  ui.sortToggle.setAttribute("aria-pressed", String(Boolean(state.sort)));
}

function nextSort() {
  setFilter("sort", SORTS[(SORTS.indexOf(state.sort) + 1) % SORTS.length]);
}

// ---- searching and paging ------------------------------------------------------------------

function syncUrl() {
  const url = new URLSearchParams();
  if (state.mode === "text" && state.q) url.set("q", state.q);
  for (const t of state.tags) url.append("tag", t);
  for (const key of PHOTO_FILTERS) if (state[key]) url.set(key, state[key]);
  if (PAGE_SIZE) url.set("limit", String(PAGE_SIZE));
  const query = url.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

async function fetchDupes(signal) {
  // One page of every group, each as a heading followed by its files (best copy first).
  const groups = await api("/api/dupes", { signal });
  const hits = groups.flatMap((group, g) => group.copies.map((copy, i) => ({
    ...copy, original: `/api/images/${copy.id}/file`, score: null, group: g, level: group.level,
    first: i === 0, size: group.copies.length,
  })));
  return { hits, offset: 0, limit: hits.length, more: false };
}

function fetchPage(offset, signal) {
  if (state.mode === "dupes") return fetchDupes(signal);
  const paging = { offset: String(offset) };
  if (PAGE_SIZE) paging.limit = String(PAGE_SIZE);
  if (state.mode === "similar") {
    return api(`/api/images/${state.like.id}/similar?${new URLSearchParams(paging)}`, { signal });
  }
  if (state.mode === "image") {
    if (!OWNER) throw new Error(NOT_OWNER);
    const form = new FormData();
    form.append("file", state.file);
    for (const [key, value] of Object.entries(paging)) form.append(key, value);
    for (const t of state.tags) form.append("tag", t);
    for (const key of PHOTO_FILTERS) if (state[key]) form.append(key, state[key]);
    return api("/api/search/image", { method: "POST", form, signal });
  }
  const query = new URLSearchParams({ q: state.mode === "text" ? state.q : "", ...paging });
  for (const t of state.tags) query.append("tag", t);
  for (const key of PHOTO_FILTERS) if (state[key]) query.set(key, state[key]);
  return api(`/api/search?${query}`, { signal });
}

function renderContext() {
  const parts = [];
  if (state.mode === "text") parts.push(el("span", { text: `Results for “${state.q}”` }));
  else if (state.mode === "similar") parts.push(el("span", { text: `Like ${state.like.name}` }));
  else if (state.mode === "dupes") parts.push(el("span", { text: "Duplicates · best copy first" }));
  else if (state.mode === "image") {
    parts.push(el("img", { class: "example", src: state.fileUrl, alt: "" }));
    parts.push(el("span", { text: `Like ${state.file.name || "the dropped image"}` }));
  } else parts.push(el("span", { text: browseTitle() }));
  if (state.mode === "similar" || state.mode === "image" || state.mode === "dupes") {
    parts.push(el("button", {
      type: "button", class: "link", "data-testid": "back-to-library", text: "Back to library",
      onclick: () => { ui.input.value = ""; state.q = ""; state.mode = "browse"; runSearch(); },
    }));
  }
  ui.context.replaceChildren(...parts);
  const chip = (label, testid, onclick) => el("button", {
    type: "button", class: "filter-chip", "data-testid": testid, "data-label": label,
    "aria-label": `Remove filter ${label}`, onclick,
  }, el("span", { text: label }), el("span", { class: "x", "aria-hidden": "true", text: "×" }));
  const chips = state.tags.map((label) => chip(label, "active-filter", () => toggleTag(label)));
  if (state.after || state.before) {
    const range = `${state.after || "…"} – ${state.before || "…"}`;
    chips.push(chip(range, "date-filter", () => { state.after = ""; setFilter("before", ""); }));
  }
  for (const key of ["place", "camera"]) {
    if (state[key]) chips.push(chip(state[key], `${key}-filter`, () => setFilter(key, "")));
  }
  ui.filters.replaceChildren(...chips);
}

function browseTitle() {
  const order = state.sort === "date" ? "oldest taken first" : "newest taken first";
  if (state.tags.length && !state.sort) return "Tagged images";
  if (hasPhotoFilters() || state.tags.length) return `Photos · ${order}`;
  return "Library · newest first";
}

async function runSearch() {
  state.abort?.abort();
  state.gen += 1;
  Object.assign(state, { hits: [], seen: new Set(), offset: 0, more: false, loading: false, abort: null });
  ui.grid.replaceChildren();
  ui.empty.hidden = true;
  showError(ui.error, "");
  hideBanner();
  syncUrl();
  renderContext();
  const gen = state.gen;
  await loadPage();
  if (gen === state.gen && state.mode === "text" && state.q) checkMatch(state.q, gen);
}

async function loadPage() {
  if (state.loading) return;
  const gen = state.gen;
  const abort = new AbortController();
  Object.assign(state, { loading: true, abort });
  renderPaging();
  try {
    const page = await fetchPage(state.offset, abort.signal);
    if (gen !== state.gen) return;
    appendHits(page.hits);
    state.offset = page.offset + page.limit;
    state.more = Boolean(page.more) && page.hits.length > 0;
  } catch (err) {
    if (gen !== state.gen) return;
    state.more = false;
    showError(ui.error, err.message);
  }
  state.loading = false;
  renderPaging();
  if (state.hits.length === 0 && ui.error.hidden) {
    ui.empty.textContent = state.mode === "browse" && !hasFilters()
      ? "Your library is empty. Run `imgsearch index FOLDER` to add pictures."
      : "No images found.";
    ui.empty.hidden = false;
  }
  if (AUTOLOAD && state.more && nearBottom()) loadPage(); // the page is not full: the sentinel will not fire again
}

function renderPaging() {
  ui.loadMore.hidden = !state.more || state.loading;
  ui.loading.hidden = !state.loading;
  ui.grid.setAttribute("aria-busy", String(state.loading));
}

const nearBottom = () => ui.sentinel.getBoundingClientRect().top < window.innerHeight + 600;

function appendHits(hits) {
  const cells = [];
  for (const hit of hits) {
    if (state.seen.has(hit.id)) continue;
    state.seen.add(hit.id);
    state.hits.push(hit);
    if (hit.first) cells.push(groupHead(hit));
    cells.push(cell(hit, state.hits.length - 1));
  }
  ui.grid.append(...cells);
}

function groupHead(hit) {
  return el("h3", {
    class: "group-head", "data-testid": "dupe-group", "data-level": hit.level,
    text: `${hit.level === "exact" ? "Exact copies" : hit.level === "copy" ? "Copies" : "Similar shots"} · ${hit.size} files`,
  });
}

function cell(hit, index) {
  const score = fmtScore(hit.score);
  const taken = fmtTaken(hit.taken);
  return el("a", {
    class: "cell", href: hit.original, role: "listitem", "data-testid": "result", "data-id": String(hit.id),
    "data-path": hit.path, "data-taken": hit.taken ?? "", title: taken ? `${hit.path}\n${taken}` : hit.path,
    onclick: (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return; // new tab: let it be
      event.preventDefault();
      openLightbox(index);
    },
  },
  el("img", { src: hit.thumbnail, alt: hit.name, loading: "lazy", decoding: "async", draggable: "false" }),
  score ? el("span", { class: "score", "data-testid": "result-score", text: score }) : "",
  hit.copies ? el("span", {
    class: "copies", "data-testid": "result-copies", title: `${plural(hit.copies, "other copy")} of this picture`,
    text: `+${hit.copies}`,
  }) : "",
  hit.reason !== undefined ? el("span", {
    class: hit.reason ? "verdict" : "verdict best", "data-testid": "dupe-verdict", text: hit.reason || "best copy",
  }) : "",
  el("span", { class: "caption", "data-testid": "result-name", text: hit.name }));
}

// ---- lightbox ------------------------------------------------------------------------------

function openLightbox(index) {
  const hit = state.hits[index];
  if (!hit) return;
  state.current = index;
  state.shown = hit.id;
  ui.lbImage.src = hit.original;
  ui.lbImage.alt = hit.name;
  ui.lbName.textContent = hit.name;
  ui.lbPath.textContent = hit.raw || hit.path; // a RAW+JPEG pair: the RAW is the original
  ui.lbOpen.href = hit.original;
  ui.lbMeta.textContent = fmtScore(hit.score) ? `score ${fmtScore(hit.score)}` : "";
  renderPhoto(hit);
  ui.lbTags.replaceChildren();
  ui.lbCopies.hidden = true;
  showError(ui.lbError, "");
  if (!ui.lb.open) ui.lb.showModal();
  loadDetail(hit.id);
}

// A copy listed in the lightbox opens in its place (the grid shows one entry per picture).
function showCopy(copy) {
  state.shown = copy.id;
  ui.lbImage.src = `/api/images/${copy.id}/file`;
  ui.lbImage.alt = ui.lbName.textContent = copy.name;
  ui.lbPath.textContent = copy.path;
  ui.lbOpen.href = `/api/images/${copy.id}/file`;
  loadDetail(copy.id);
}

async function loadDetail(id) {
  try {
    renderDetail(await api(`/api/images/${id}`));
  } catch (err) {
    if (state.shown === id) showError(ui.lbError, err.message);
  }
}

function renderDetail(image) {
  const hit = state.hits[state.current];
  if (!hit || state.shown !== image.id) return; // the user moved on
  ui.lbPath.textContent = image.raw || image.path;
  renderCopies(image);
  renderPhoto(image);
  const meta = [];
  if (image.raw) meta.push(`RAW original, shown through ${image.name}`);
  if (image.width && image.height) meta.push(`${image.width} × ${image.height}`);
  if (image.bytes) meta.push(fmtBytes(image.bytes));
  if (image.indexed_at) meta.push(`indexed ${new Date(image.indexed_at * 1000).toLocaleString()}`);
  if (image.generated) meta.push("generated");
  if (fmtScore(hit.score) && hit.id === image.id) meta.push(`score ${fmtScore(hit.score)}`);
  ui.lbMeta.textContent = meta.join(" · ");
  ui.lbTags.replaceChildren(...image.tags.map((t) => el("li", {
    class: `lb-tag ${t.source}`, "data-testid": "lightbox-tag", "data-label": t.label, "data-source": t.source,
    title: t.source === "hand" ? "added by hand" : `automatic${t.probability == null ? "" : `, p=${t.probability.toFixed(2)}`}`,
  },
  el("span", { text: t.label }),
  t.source === "hand" ? el("span", { class: "hand-mark", text: "✎", "aria-label": "by hand" }) : "",
  OWNER ? el("button", {
    type: "button", class: "x", "data-testid": "remove-tag", "aria-label": `Remove tag ${t.label}`, text: "×",
    onclick: () => setTag(image.id, t.label, false),
  }) : "")));
  ui.tagForm.hidden = !OWNER;
  if (!image.tags.length) ui.lbTags.append(el("li", { class: "muted small", text: "No tags" }));
}

// The other files of this picture, best copy first: each opens in the lightbox.
function renderCopies(image) {
  ui.lbCopies.hidden = !image.copies.length;
  ui.lbCopyList.replaceChildren(...image.copies.map((copy) => el("li", {},
    el("button", {
      type: "button", class: "copy", "data-testid": "lightbox-copy", "data-id": String(copy.id),
      title: copy.path, onclick: () => showCopy(copy),
    },
    el("img", { src: copy.thumbnail, alt: "", loading: "lazy" }),
    el("span", { class: "copy-text" },
      el("span", { class: "copy-name", text: copy.name }),
      el("span", { class: "muted small", text: `${copy.width} × ${copy.height} · ${copy.reason || "best copy"}` }))))));
}

// Date, camera, lens and place of the photo in the lightbox (what the hit or the image record carries).
function renderPhoto(photo) {
  const source = { exif: "camera", xmp: "XMP", filename: "file name", mtime: "file time" }[photo.taken_source];
  const where = photo.place ?? (typeof photo.lat === "number" ? `${photo.lat.toFixed(4)}, ${photo.lon.toFixed(4)}` : "");
  const rows = [
    ["Taken", fmtTaken(photo.taken) + (source ? ` · from the ${source}` : ""), "lightbox-taken"],
    ["Camera", photo.camera, "lightbox-camera"],
    ["Lens", photo.lens, "lightbox-lens"],
    ["Place", where, "lightbox-place"],
  ].filter(([, value]) => value);
  ui.lbPhoto.replaceChildren(...rows.flatMap(([name, value, testid]) => [
    el("dt", { text: name }), el("dd", { "data-testid": testid, text: value }),
  ]));
}

async function setTag(id, label, present) {
  showError(ui.lbError, "");
  try {
    renderDetail(await api(`/api/images/${id}/tags`, { method: "POST", json: { label, present } }));
    loadTags();
  } catch (err) {
    showError(ui.lbError, err.message);
  }
}

function step(delta) {
  const next = state.current + delta;
  if (next < 0 || next >= state.hits.length) return;
  openLightbox(next);
  ui.grid.children[next]?.scrollIntoView({ block: "nearest" });
  if (next >= state.hits.length - 3 && state.more) loadPage();
}

function moreLikeThis() {
  const hit = state.hits[state.current];
  if (!hit) return;
  ui.lb.close();
  ui.input.value = "";
  Object.assign(state, { mode: "similar", like: { id: hit.id, name: hit.name }, q: "", tags: [] });
  for (const key of PHOTO_FILTERS) state[key] = ""; // "more like this" searches the whole library
  ui.dateAfter.value = ui.dateBefore.value = "";
  renderTags();
  renderFacets();
  renderSort();
  runSearch();
  window.scrollTo({ top: 0 });
}

// ---- generate if missing -------------------------------------------------------------------

async function checkMatch(q, gen) {
  let matched = state.hits.length > 0;
  if (matched) {
    try {
      const verdict = await api(`/api/match?${new URLSearchParams({ q })}`);
      // Not ready: the server is still embedding its contrast prompts; no verdict, so no banner.
      matched = verdict.ready === false || verdict.matched;
    } catch {
      return; // the decision is advice; a failure here must not disturb the results
    }
  }
  if (gen === state.gen && !matched) showBanner(q);
}

function showBanner(q) {
  ui.banner.dataset.prompt = q;
  ui.genButton.textContent = "Generate it";
  ui.genTitle.textContent = `Nothing in your library looks like “${q}”`;
  const available = OWNER && state.status?.generation_available !== false;
  ui.genButton.disabled = !available || Boolean(state.job);
  ui.genNote.textContent = available
    ? "Make one with CLIP guidance (VQGAN+CLIP): a few minutes on a CPU, under one on a GPU."
    : OWNER ? "Image generation is not available on this server." : NOT_OWNER;
  ui.genJob.hidden = true;
  ui.genResult.hidden = true;
  showError(ui.genError, "");
  ui.banner.hidden = false;
}

function hideBanner() {
  if (!state.job) ui.banner.hidden = true; // a running job stays in view
}

async function generate() {
  const prompt = ui.banner.dataset.prompt;
  ui.genButton.disabled = true;
  showError(ui.genError, "");
  ui.genResult.hidden = true;
  try {
    const { job } = await api("/api/generate", { method: "POST", json: { prompt } });
    state.job = job;
    renderJob({ state: "running", phase: "starting", done: 0, total: 0 });
    pollJob(job);
  } catch (err) {
    ui.genButton.disabled = false;
    showError(ui.genError, err.message);
  }
}

async function pollJob(job) {
  let info;
  try {
    info = await api(`/api/jobs/${encodeURIComponent(job)}`);
  } catch (err) {
    info = { state: "failed", error: err.message };
  }
  renderJob(info);
  if (info.state === "running") {
    setTimeout(() => pollJob(job), POLL_MS);
    return;
  }
  state.job = null;
  ui.genButton.disabled = false;
  ui.genButton.textContent = "Generate again";
  if (info.state === "done") loadStatus();
}

function renderJob(info) {
  ui.banner.hidden = false;
  ui.genJob.hidden = info.state !== "running";
  const total = info.total || 0;
  ui.genProgress.max = total || 1;
  if (total) ui.genProgress.value = info.done ?? 0;
  else ui.genProgress.removeAttribute("value"); // indeterminate until the total is known
  const parts = [info.phase || "working"];
  if (total) parts.push(`${info.done}/${total}`);
  if (typeof info.score === "number") parts.push(`CLIP ${fmtScore(info.score)}`);
  ui.genPhase.textContent = parts.join(" · ");
  if (info.notices?.length) ui.genNote.textContent = info.notices[info.notices.length - 1];
  if (info.state === "failed") showError(ui.genError, info.error || "generation failed");
  if (info.state === "done" && info.result) {
    const r = info.result;
    ui.genImage.src = r.image;
    ui.genCaption.textContent = [`“${info.prompt ?? ui.banner.dataset.prompt}”`, `CLIP score ${fmtScore(r.final_score)}`,
      r.generator, typeof r.seconds === "number" ? `${r.seconds.toFixed(1)} s` : "", r.path].filter(Boolean).join(" · ");
    ui.genResult.dataset.imageId = r.image_id ?? "";
    ui.genResult.hidden = false;
  }
}

// ---- search by example: picker, drag and drop, paste ---------------------------------------

function searchByImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    showError(ui.error, "That is not an image file.");
    return;
  }
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  ui.input.value = "";
  Object.assign(state, { mode: "image", file, fileUrl: URL.createObjectURL(file), q: "" });
  runSearch();
}

function imageFile(list) {
  return [...(list ?? [])].find((f) => f.type.startsWith("image/")) ?? null;
}

function setUpDrop() {
  let depth = 0;
  const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth += 1;
    ui.overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) ui.overlay.hidden = true;
  });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    ui.overlay.hidden = true;
    const file = imageFile(e.dataTransfer.files);
    if (file) searchByImage(file);
    else showError(ui.error, "Drop an image file to search by example.");
  });
  document.addEventListener("paste", (e) => {
    const file = imageFile(e.clipboardData?.files);
    if (file) searchByImage(file);
  });
}

// ---- wiring --------------------------------------------------------------------------------

function setUpEvents() {
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    state.q = ui.input.value.trim();
    state.mode = state.q ? "text" : "browse";
    runSearch();
  });
  ui.imageButton.addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", () => {
    const file = ui.file.files?.[0];
    if (file) searchByImage(file);
    ui.file.value = ""; // picking the same file again still fires change
  });
  ui.tagFilter.addEventListener("input", renderTags);
  ui.dateForm.addEventListener("submit", (e) => {
    e.preventDefault();
    state.after = ui.dateAfter.value.trim();
    setFilter("before", ui.dateBefore.value.trim());
  });
  ui.sortToggle.addEventListener("click", nextSort);
  ui.loadMore.addEventListener("click", () => loadPage());
  ui.genButton.addEventListener("click", generate);
  ui.genImage.addEventListener("click", () => {
    const id = Number(ui.genResult.dataset.imageId);
    if (id) window.open(`/api/images/${id}/file`, "_blank", "noopener");
  });
  $("lightbox-close").addEventListener("click", () => ui.lb.close());
  $("lightbox-prev").addEventListener("click", () => step(-1));
  $("lightbox-next").addEventListener("click", () => step(1));
  $("more-like-this").addEventListener("click", moreLikeThis);
  ui.dupesButton.addEventListener("click", () => {
    ui.input.value = "";
    Object.assign(state, { mode: "dupes", q: "" });
    runSearch();
  });
  ui.lb.addEventListener("click", (e) => { if (e.target === ui.lb) ui.lb.close(); }); // the backdrop
  ui.lb.addEventListener("close", () => {
    ui.lbImage.removeAttribute("src");
    ui.grid.children[state.current]?.focus({ preventScroll: true });
  });
  ui.lb.addEventListener("keydown", (e) => {
    if (e.target === ui.tagInput) return;
    if (e.key === "ArrowLeft") step(-1);
    else if (e.key === "ArrowRight") step(1);
  });
  ui.tagForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const label = ui.tagInput.value.trim();
    if (!label || state.shown === null) return;
    ui.tagInput.value = "";
    setTag(state.shown, label, true);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== ui.input && !ui.lb.open && !isTyping(e.target)) {
      e.preventDefault();
      ui.input.focus();
    }
  });
}

const isTyping = (node) => node instanceof HTMLInputElement || node instanceof HTMLTextAreaElement;

function setUpScroll() {
  if (!AUTOLOAD) return;
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && state.more && !state.loading) loadPage();
  }, { rootMargin: "600px 0px" });
  observer.observe(ui.sentinel);
}

function start() {
  setUpEvents();
  setUpDrop();
  setUpScroll();
  state.q = (params.get("q") ?? "").trim();
  state.tags = params.getAll("tag").filter(Boolean);
  for (const key of PHOTO_FILTERS) state[key] = (params.get(key) ?? "").trim();
  if (!SORTS.includes(state.sort)) state.sort = "";
  state.mode = state.q ? "text" : "browse";
  ui.input.value = state.q;
  ui.dateAfter.value = state.after;
  ui.dateBefore.value = state.before;
  renderSort();
  loadStatus().then(() => loadTags()).then(() => loadFacets());
  runSearch();
}

start();
