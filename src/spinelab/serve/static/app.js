// The spinelab service page: upload a zipped study, follow its job, show the result (plain JS, no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const DIGITS = 3;  // probabilities are shown with 3 decimals

function format(value) { return Number(value).toFixed(DIGITS); }

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok && response.status !== 503) throw new Error(body.detail || response.statusText);
  return body;
}

async function refreshHealth() {
  try {
    const health = await getJSON("/health");
    $("health").textContent = health.status;
    $("health").className = "pill " + health.status;
  } catch (err) {
    $("health").textContent = "offline";
    $("health").className = "pill failed";
  }
}

async function loadModels() {
  const models = await getJSON("/v1/models");
  const select = $("model");
  select.innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = `${m.name} (${m.task}/${m.route}, ${m.state})`;
    select.appendChild(option);
  }
  const describe = () => {
    const m = models.find((x) => x.name === select.value);
    $("model-info").textContent = m ? m.path : "";
  };
  select.onchange = describe;
  describe();
}

function upload(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("model").value);
  if ($("dicom-out").checked) form.append("dicom_out", "true");
  $("job").hidden = false;
  $("result").hidden = true;
  $("error").hidden = true;
  $("study").textContent = file.name;
  showState({state: "uploading", progress: 0, message: "uploading"});
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/jobs");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) showState({state: "uploading", progress: 0, message: `uploading ${Math.round(100 * e.loaded / e.total)}%`});
  };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (err) { body = {detail: xhr.responseText}; }
    if (xhr.status !== 202) { showError(body.detail || `upload refused (${xhr.status})`); return; }
    follow(body.id);
  };
  xhr.onerror = () => showError("the upload failed (is the server running?)");
  xhr.send(form);
}

function showState(job) {
  $("state").textContent = job.state;
  $("state").className = "pill " + job.state;
  $("message").textContent = job.message && job.message !== job.state ? job.message : "";
  $("progress").value = job.progress || 0;
  document.body.dataset.jobState = job.state;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  showState({state: "failed", progress: 1, message: "failed"});
}

async function follow(id) {
  document.body.dataset.jobId = id;
  for (;;) {
    const job = await getJSON(`/v1/jobs/${id}`);
    showState(job);
    if (job.study) $("study").textContent = job.study;
    if (job.state === "done" || job.state === "failed") {
      if (job.error) { $("error").textContent = job.error; $("error").hidden = false; }
      showResult(await getJSON(`/v1/jobs/${id}/result`));
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function cell(tag, text, cls) {
  const c = document.createElement(tag);
  c.textContent = text;
  if (cls) c.className = cls;
  return c;
}

function showResult(body) {
  const result = body.result;
  $("result").hidden = false;
  const head = $("probabilities").tHead, rows = $("probabilities").tBodies[0];
  head.innerHTML = ""; rows.innerHTML = ""; $("warnings").innerHTML = "";
  if (result) {
    $("status").textContent = result.status || "ok";
    $("status").className = "pill " + (result.status || "ok");
    for (const w of result.warnings || []) $("warnings").appendChild(cell("li", w));
    if (result.probabilities) {
      const tr = head.insertRow(); tr.append(cell("th", "target"), cell("th", "P(fracture)"));
      for (const [key, value] of Object.entries(result.probabilities)) {
        const row = rows.insertRow(); row.dataset.key = key;
        row.append(cell("td", key), cell("td", format(value), "value"));
      }
    } else if (result.grades) {
      const grades = Object.keys(Object.values(result.grades)[0] || {});
      const tr = head.insertRow(); tr.append(cell("th", "target"), ...grades.map((g) => cell("th", g)));
      for (const [key, dist] of Object.entries(result.grades)) {
        const row = rows.insertRow(); row.dataset.key = key;
        row.append(cell("td", key), ...grades.map((g) => cell("td", format(dist[g]), "value")));
      }
    }
  } else {
    $("status").textContent = "no result";
  }
  $("figure-box").hidden = !body.figure;
  if (body.figure) $("figure").src = body.figure;
  $("files").innerHTML = "";
  for (const f of body.files) {
    const li = document.createElement("li"), a = document.createElement("a");
    a.href = f.url; a.textContent = f.name; a.download = f.name.split("/").pop();
    li.append(a, ` (${(f.bytes / 1024).toFixed(1)} KB)`);
    $("files").appendChild(li);
  }
  document.body.dataset.resultShown = "1";
}

function setUpDrop() {
  const drop = $("drop"), input = $("file");
  drop.onclick = (e) => { if (e.target !== input) input.click(); };
  drop.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") input.click(); };
  input.onchange = () => { if (input.files.length) upload(input.files[0]); };
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  };
}

setUpDrop();
refreshHealth();
setInterval(refreshHealth, 3000);
loadModels().catch((err) => showError(String(err)));
