/*
 * fourdfy's 3D viewer for the result page (save/index.html): plain WebGL (2, else 1), no dependencies.
 *
 * It shows the .glb files that fourdfy/exporters/gltf.py writes (and simple glTF 2.0 binaries like them):
 *  - triangle meshes with POSITION, optional NORMAL (else computed here) and COLOR_0 (VEC3/VEC4, float or
 *    normalized unsigned byte/short), indices u8/u16/u32 (or none); node translation/rotation/scale/matrix;
 *  - frames: the key times of the first animation's "scale" channels cut the clip into intervals; frame k
 *    shows the nodes whose step-sampled scale at the start of interval k is non-zero (our writer hides every
 *    frame node but one with a zero scale). Without such an animation the scene is one static frame;
 *  - KHR_materials_unlit: the vertex colours (the NeRF's radiance) are shown as stored, like the videos;
 *    the "shading" box adds a light for a better look at the shape. Other materials start shaded.
 *
 * Usage: var status = fourdfyView(boxElement, glbBytes);  // glbBytes: Uint8Array
 * status: {loaded, frames, frame, time, duration, playing, drawn, error} plus play(), pause(), setFrame(k),
 * setAutoRotate(on), setShading(on) and coverage() (draws now and returns the share of canvas pixels that
 * differ from the background). A failure (no WebGL, malformed or unsupported file) is shown in the box,
 * logged with console.error and stored in status.error; it never leaves a silent blank.
 */
(function () {
  'use strict';

  var BACKGROUND = [244 / 255, 244 / 255, 244 / 255];
  var SUPPORTED_EXTENSIONS = ['KHR_materials_unlit'];
  var WIDTH = {SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4, MAT4: 16};
  // componentType -> [DataView getter, bytes, divisor when normalized]
  var COMPONENT = {
    5120: ['getInt8', 1, 127], 5121: ['getUint8', 1, 255], 5122: ['getInt16', 2, 32767],
    5123: ['getUint16', 2, 65535], 5125: ['getUint32', 4, 0], 5126: ['getFloat32', 4, 0]
  };
  var CSS = '.fv-box{position:relative;display:inline-block}' +
    '.fv-canvas{display:block;width:480px;height:400px;background:#f4f4f4;border:1px solid #ddd;' +
    'touch-action:none;cursor:grab}' +
    '.fv-bar{display:flex;gap:8px;align-items:center;width:482px;font-size:.85em;color:#444;margin-top:4px}' +
    '.fv-bar input[type=range]{flex:1;min-width:0}.fv-bar button{width:4.5em}.fv-label{white-space:nowrap}' +
    '.fv-error{position:absolute;left:0;top:0;width:480px;padding:1em;box-sizing:border-box;color:#b00;' +
    'white-space:pre-wrap}';

  // ---------------------------------------------------------------- GLB container and accessors
  function parseGlb(bytes) {
    var dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.byteLength < 20 || dv.getUint32(0, true) !== 0x46546c67) throw new Error('not a .glb file (bad magic)');
    if (dv.getUint32(4, true) !== 2) throw new Error('glTF version ' + dv.getUint32(4, true) + ', expected 2');
    var length = dv.getUint32(8, true), offset = 12, json = null, bin = null;
    if (length > bytes.byteLength) throw new Error('truncated .glb: ' + bytes.byteLength + ' of ' + length + ' bytes');
    while (offset + 8 <= length) {
      var size = dv.getUint32(offset, true), type = dv.getUint32(offset + 4, true);
      if (offset + 8 + size > length) throw new Error('a .glb chunk runs past the end of the file');
      var data = bytes.subarray(offset + 8, offset + 8 + size);
      if (type === 0x4e4f534a && !json) json = JSON.parse(new TextDecoder().decode(data));  // "JSON"
      else if (type === 0x004e4942 && !bin) bin = data;  // "BIN\0"
      offset += 8 + ((size + 3) & ~3);  // chunks are 4-byte aligned
    }
    if (!json) throw new Error('no JSON chunk in the .glb');
    var required = (json.extensionsRequired || []).filter(function (e) { return SUPPORTED_EXTENSIONS.indexOf(e) < 0; });
    if (required.length) throw new Error('unsupported glTF extensions: ' + required.join(', '));
    return {json: json, bin: bin};
  }

  // An accessor's elements as a flat Float32Array (or Uint32Array when asInt), with its width and count.
  function readAccessor(gltf, index, asInt) {
    var acc = (gltf.json.accessors || [])[index];
    if (!acc) throw new Error('accessor ' + index + ' is missing');
    if (acc.sparse) throw new Error('accessor ' + index + ': sparse accessors are not supported');
    var width = WIDTH[acc.type], comp = COMPONENT[acc.componentType], count = acc.count | 0;
    if (!width || !comp) throw new Error('accessor ' + index + ': bad type ' + acc.type + '/' + acc.componentType);
    var out = asInt ? new Uint32Array(count * width) : new Float32Array(count * width);
    if (acc.bufferView === undefined) return {data: out, width: width, count: count};  // all zeros (spec)
    var view = (gltf.json.bufferViews || [])[acc.bufferView], bin = gltf.bin;
    if (!view || (view.buffer || 0) !== 0 || !bin) throw new Error('accessor ' + index + ': no data in the BIN chunk');
    var size = comp[1], stride = view.byteStride || width * size;
    var start = (view.byteOffset || 0) + (acc.byteOffset || 0);
    var end = start + (count - 1) * stride + width * size;
    if (count > 0 && (end > (view.byteOffset || 0) + view.byteLength || end > bin.byteLength))
      throw new Error('accessor ' + index + ' runs past its buffer view');
    if (acc.componentType === 5126 && stride === 4 * width && (bin.byteOffset + start) % 4 === 0) {
      out.set(new Float32Array(bin.buffer, bin.byteOffset + start, count * width));  // fast path: tight floats
    } else {
      var dv = new DataView(bin.buffer, bin.byteOffset, bin.byteLength), get = dv[comp[0]].bind(dv);
      var div = acc.normalized ? comp[2] : 0;
      for (var i = 0; i < count; i++) {
        for (var c = 0; c < width; c++) {
          var v = get(start + i * stride + c * size, true);
          out[i * width + c] = div ? Math.max(v / div, -1) : v;
        }
      }
    }
    return {data: out, width: width, count: count};
  }

  // Area-weighted vertex normals, for meshes written without NORMAL.
  function vertexNormals(pos, idx) {
    var n = new Float32Array(pos.length);
    for (var f = 0; f < idx.length; f += 3) {
      var a = 3 * idx[f], b = 3 * idx[f + 1], c = 3 * idx[f + 2];
      var ux = pos[b] - pos[a], uy = pos[b + 1] - pos[a + 1], uz = pos[b + 2] - pos[a + 2];
      var vx = pos[c] - pos[a], vy = pos[c + 1] - pos[a + 1], vz = pos[c + 2] - pos[a + 2];
      var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      for (var j = 0; j < 3; j++) {
        var k = 3 * idx[f + j];
        n[k] += nx; n[k + 1] += ny; n[k + 2] += nz;
      }
    }
    return n;
  }

  // ---------------------------------------------------------------- 4x4 matrices (column-major, like WebGL)
  function mul(a, b) {
    var o = new Float32Array(16);
    for (var c = 0; c < 4; c++) for (var r = 0; r < 4; r++)
      o[c * 4 + r] = a[r] * b[c * 4] + a[4 + r] * b[c * 4 + 1] + a[8 + r] * b[c * 4 + 2] + a[12 + r] * b[c * 4 + 3];
    return o;
  }
  function trs(t, q, s) {  // translation * rotation (unit quaternion x, y, z, w) * scale
    var x = q[0], y = q[1], z = q[2], w = q[3];
    return new Float32Array([
      (1 - 2 * (y * y + z * z)) * s[0], 2 * (x * y + z * w) * s[0], 2 * (x * z - y * w) * s[0], 0,
      2 * (x * y - z * w) * s[1], (1 - 2 * (x * x + z * z)) * s[1], 2 * (y * z + x * w) * s[1], 0,
      2 * (x * z + y * w) * s[2], 2 * (y * z - x * w) * s[2], (1 - 2 * (x * x + y * y)) * s[2], 0,
      t[0], t[1], t[2], 1]);
  }
  function perspective(fovy, aspect, near, far) {
    var f = 1 / Math.tan(fovy / 2), d = near - far;
    return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) / d, -1, 0, 0, 2 * far * near / d, 0]);
  }
  function lookAt(eye, target, up) {
    var z = norm(sub(eye, target)), x = norm(cross(up, z)), y = cross(z, x);
    return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
      -dot(x, eye), -dot(y, eye), -dot(z, eye), 1]);
  }
  function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
  function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
  function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function norm(a) { var l = Math.sqrt(dot(a, a)) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
  function apply(m, p) { return [0, 1, 2].map(function (r) { return m[r] * p[0] + m[4 + r] * p[1] + m[8 + r] * p[2] + m[12 + r]; }); }

  // ---------------------------------------------------------------- scene: frames of (primitive, matrix)
  // Step-sampled "scale" tracks of the first animation, by node, and the sorted key times.
  function scaleTracks(gltf) {
    var anim = (gltf.json.animations || [])[0], tracks = {}, keys = [];
    (anim ? anim.channels || [] : []).forEach(function (ch) {
      if (!ch.target || ch.target.path !== 'scale' || ch.target.node === undefined) return;
      var s = anim.samplers[ch.sampler];
      if (!s) throw new Error('animation channel with a missing sampler');
      var times = readAccessor(gltf, s.input).data, values = readAccessor(gltf, s.output).data;
      var spline = s.interpolation === 'CUBICSPLINE';  // (in-tangent, value, out-tangent) per key
      if (values.length !== times.length * 3 * (spline ? 3 : 1)) throw new Error('animation sampler: wrong output size');
      tracks[ch.target.node] = {times: times, values: values, step: spline ? 9 : 3, first: spline ? 3 : 0};
      keys.push.apply(keys, times);
    });
    keys = keys.sort(function (a, b) { return a - b; }).filter(function (t, i, a) { return i === 0 || t > a[i - 1]; });
    return {tracks: tracks, keys: keys};
  }
  function scaleAt(track, t) {  // the value of the last key at or before t (the first key before it)
    var i = 0;
    while (i + 1 < track.times.length && track.times[i + 1] <= t) i++;
    var o = track.first + i * track.step;
    return [track.values[o], track.values[o + 1], track.values[o + 2]];
  }
  // What is drawn at time t: every (primitive, world matrix) of the scene's visible nodes.
  function collect(gltf, prims, tracks, t) {
    var json = gltf.json, nodes = json.nodes || [], items = [];
    var scene = (json.scenes || [])[json.scene || 0];
    if (!scene) throw new Error('the .glb has no scene');
    function visit(i, parent, depth) {
      var node = nodes[i];
      if (!node || depth > 64) throw new Error('bad node ' + i);
      var s = tracks[i] ? scaleAt(tracks[i], t) : node.scale || [1, 1, 1];
      if (s[0] === 0 && s[1] === 0 && s[2] === 0) return;  // hidden (our writer's frame switch)
      var m = mul(parent, node.matrix ? new Float32Array(node.matrix)
        : trs(node.translation || [0, 0, 0], node.rotation || [0, 0, 0, 1], s));
      if (node.mesh !== undefined) {
        if (!prims[node.mesh]) throw new Error('node ' + i + ' refers to a missing mesh ' + node.mesh);
        prims[node.mesh].forEach(function (p) { items.push({prim: p, matrix: m}); });
      }
      (node.children || []).forEach(function (c) { visit(c, m, depth + 1); });
    }
    (scene.nodes || []).forEach(function (i) { visit(i, trs([0, 0, 0], [0, 0, 0, 1], [1, 1, 1]), 0); });
    return items;
  }

  // Reads one primitive and uploads it: vertex buffers, index buffer, local bounds, material.
  function uploadPrimitive(gl, gltf, prim, bigIndices) {
    if (prim.mode !== undefined && prim.mode !== 4) throw new Error('only triangle meshes are supported');
    var at = prim.attributes || {};
    if (at.POSITION === undefined) throw new Error('a mesh primitive has no POSITION');
    var pos = readAccessor(gltf, at.POSITION), n = pos.count;
    if (pos.width !== 3) throw new Error('POSITION is not VEC3');
    var idx = prim.indices !== undefined ? readAccessor(gltf, prim.indices, true).data
      : Uint32Array.from({length: n}, function (_, i) { return i; });
    if (idx.length % 3) throw new Error('the index count is not a multiple of 3');
    for (var i = 0; i < idx.length; i++) if (idx[i] >= n) throw new Error('index ' + idx[i] + ' out of range');
    var rgb = new Float32Array(3 * n).fill(0.8);
    if (at.COLOR_0 !== undefined) {
      var col = readAccessor(gltf, at.COLOR_0);
      if (col.count !== n || col.width < 3) throw new Error('COLOR_0 does not match POSITION');
      for (i = 0; i < n; i++) for (var c = 0; c < 3; c++) rgb[3 * i + c] = col.data[col.width * i + c];
    }
    var nrm = at.NORMAL !== undefined ? readAccessor(gltf, at.NORMAL).data : vertexNormals(pos.data, idx);
    if (nrm.length !== 3 * n) throw new Error('NORMAL does not match POSITION');
    var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (i = 0; i < 3 * n; i++) {
      lo[i % 3] = Math.min(lo[i % 3], pos.data[i]); hi[i % 3] = Math.max(hi[i % 3], pos.data[i]);
    }
    var mat = (gltf.json.materials || [])[prim.material] || {};
    var pbr = mat.pbrMetallicRoughness || {};
    if (n > 65535 && !bigIndices) throw new Error('this WebGL cannot draw meshes over 65535 vertices');
    function buffer(target, data) {
      var b = gl.createBuffer(); gl.bindBuffer(target, b); gl.bufferData(target, data, gl.STATIC_DRAW); return b;
    }
    return {
      position: buffer(gl.ARRAY_BUFFER, pos.data), normal: buffer(gl.ARRAY_BUFFER, nrm),
      color: buffer(gl.ARRAY_BUFFER, rgb), count: idx.length, big: n > 65535,
      index: buffer(gl.ELEMENT_ARRAY_BUFFER, n > 65535 ? idx : Uint16Array.from(idx)),
      vertices: pos.data, lo: lo, hi: hi, factor: (pbr.baseColorFactor || [1, 1, 1, 1]).slice(0, 3),
      unlit: !!(mat.extensions && mat.extensions.KHR_materials_unlit)
    };
  }

  var VERTEX = 'attribute vec3 aPos, aNormal, aColor; uniform mat4 uViewProj, uModel;' +
    'varying vec3 vNormal, vColor;' +
    'void main() { gl_Position = uViewProj * uModel * vec4(aPos, 1.0);' +
    ' vNormal = (uModel * vec4(aNormal, 0.0)).xyz; vColor = aColor; }';
  // Unlit: the stored colour. Shaded: ambient plus a two-sided light (marching-cubes meshes may be open).
  var FRAGMENT = 'precision mediump float; uniform vec3 uLight, uFactor; uniform float uShade;' +
    'varying vec3 vNormal, vColor;' +
    'void main() { float d = length(vNormal) > 0.0 ? abs(dot(normalize(vNormal), uLight)) : 1.0;' +
    ' gl_FragColor = vec4(vColor * uFactor * mix(1.0, 0.4 + 0.7 * d, uShade), 1.0); }';

  function program(gl) {
    var p = gl.createProgram();
    [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, FRAGMENT]].forEach(function (st) {
      var s = gl.createShader(st[0]);
      gl.shaderSource(s, st[1]); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error('shader: ' + gl.getShaderInfoLog(s));
      gl.attachShader(p, s);
    });
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error('shader link: ' + gl.getProgramInfoLog(p));
    return p;
  }

  // ---------------------------------------------------------------- the viewer
  function el(tag, cls, parent) { var e = document.createElement(tag); e.className = cls; parent.appendChild(e); return e; }

  window.fourdfyView = function (box, bytes) {
    var status = {loaded: false, frames: 0, frame: 0, time: 0, duration: 0, playing: false, drawn: 0, error: null};
    if (!document.getElementById('fv-style')) { var st = el('style', '', document.head); st.id = 'fv-style'; st.textContent = CSS; }
    box.classList.add('fv-box');
    var canvas = el('canvas', 'fv-canvas', box), bar = el('div', 'fv-bar', box);
    function fail(message) {
      status.error = message; status.loaded = false; status.playing = false;
      el('div', 'fv-error', box).textContent = '3D viewer: ' + message;
      bar.hidden = true;
      console.error('fourdfy viewer: ' + message);
      return status;
    }
    var gl = canvas.getContext('webgl2', {alpha: false, antialias: true}) ||
      canvas.getContext('webgl', {alpha: false, antialias: true});
    if (!gl) return fail('WebGL is not available in this browser, so the model cannot be shown. ' +
      'Download the .glb below and open it in any glTF viewer.');
    var frames = [], prog, loc = {}, cam = {};
    try {
      var gltf = parseGlb(bytes), big = !!(window.WebGL2RenderingContext && gl instanceof WebGL2RenderingContext) ||
        !!gl.getExtension('OES_element_index_uint');
      var prims = (gltf.json.meshes || []).map(function (m) {
        return (m.primitives || []).map(function (p) { return uploadPrimitive(gl, gltf, p, big); });
      });
      var anim = scaleTracks(gltf), keys = anim.keys.length > 1 ? anim.keys : [0, 0];
      for (var k = 0; k + 1 < keys.length; k++)
        frames.push({start: keys[k] - keys[0], items: collect(gltf, prims, anim.tracks, keys[k])});
      status.duration = keys[keys.length - 1] - keys[0];
      // framing: a sphere around every vertex of every frame, so a growing object does not leave the view;
      // centred on the bounding box, radius from the vertices (tighter than the box's half diagonal)
      var items = [].concat.apply([], frames.map(function (f) { return f.items; }))
        .filter(function (it) { return it.prim.lo[0] <= it.prim.hi[0]; });  // primitives with vertices
      var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity], r2 = 0;
      items.forEach(function (it) {
        for (var corner = 0; corner < 8; corner++) {
          var p = apply(it.matrix, [0, 1, 2].map(function (a) { return (corner >> a) & 1 ? it.prim.hi[a] : it.prim.lo[a]; }));
          for (var a = 0; a < 3; a++) { lo[a] = Math.min(lo[a], p[a]); hi[a] = Math.max(hi[a], p[a]); }
        }
      });
      if (!(lo[0] <= hi[0])) throw new Error('the model has no triangles');
      cam.target = [0, 1, 2].map(function (a) { return (lo[a] + hi[a]) / 2; });
      items.forEach(function (it) {
        var m = it.matrix, v = it.prim.vertices, o = cam.target;
        for (var i = 0; i < v.length; i += 3) {
          var x = m[0] * v[i] + m[4] * v[i + 1] + m[8] * v[i + 2] + m[12] - o[0];
          var y = m[1] * v[i] + m[5] * v[i + 1] + m[9] * v[i + 2] + m[13] - o[1];
          var z = m[2] * v[i] + m[6] * v[i + 1] + m[10] * v[i + 2] + m[14] - o[2];
          r2 = Math.max(r2, x * x + y * y + z * z);
        }
      });
      cam.radius = Math.max(Math.sqrt(r2), 1e-3);
      prog = program(gl);
      ['aPos', 'aNormal', 'aColor'].forEach(function (n) { loc[n] = gl.getAttribLocation(prog, n); });
      ['uViewProj', 'uModel', 'uLight', 'uFactor', 'uShade'].forEach(function (n) { loc[n] = gl.getUniformLocation(prog, n); });
    } catch (e) {
      return fail('cannot show this model: ' + (e && e.message ? e.message : e));
    }
    var fov = 30 * Math.PI / 180;
    function resetView() {  // the bounding sphere fills ~85 % of the view's height
      cam.yaw = 30 * Math.PI / 180; cam.pitch = 15 * Math.PI / 180; cam.dist = 1.15 * cam.radius / Math.sin(fov / 2);
    }
    resetView();
    var shade = frames.some(function (f) { return f.items.some(function (it) { return !it.prim.unlit; }); });
    var autoRotate = true, dirty = true;

    // controls: play/pause, frame slider, frame label, auto-rotate and shading toggles
    var play = el('button', 'fv-play', bar), slider = el('input', 'fv-slider', bar), label = el('span', 'fv-label', bar);
    slider.type = 'range'; slider.min = 0; slider.max = frames.length - 1; slider.step = 1; slider.value = 0;
    if (frames.length < 2) { play.hidden = true; slider.hidden = true; }
    function toggle(text, on, change) {
      var l = el('label', '', bar), input = el('input', '', l);
      input.type = 'checkbox'; input.checked = on; l.appendChild(document.createTextNode(' ' + text));
      input.addEventListener('change', function () { change(input.checked); dirty = true; });
      return input;
    }
    var rotateBox = toggle('rotate', true, function (on) { autoRotate = on; });
    var shadeBox = toggle('shading', shade, function (on) { shade = on; });
    play.addEventListener('click', function () { if (status.playing) status.pause(); else status.play(); });
    slider.addEventListener('input', function () { status.pause(); status.setFrame(+slider.value); });

    var drag = null;  // orbit: drag to rotate, wheel to zoom, double-click to reset
    canvas.addEventListener('pointerdown', function (e) { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
    canvas.addEventListener('pointerup', function () { drag = null; });
    canvas.addEventListener('pointermove', function (e) {
      if (!drag) return;
      cam.yaw -= (e.clientX - drag[0]) * 0.01;
      cam.pitch = Math.max(-1.5, Math.min(1.5, cam.pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY]; dirty = true;
      if (autoRotate) { autoRotate = false; rotateBox.checked = false; }
    });
    canvas.addEventListener('wheel', function (e) {
      e.preventDefault();
      cam.dist = Math.max(0.2 * cam.radius, Math.min(20 * cam.radius, cam.dist * Math.exp(e.deltaY * 0.001)));
      dirty = true;
    }, {passive: false});
    canvas.addEventListener('dblclick', function () { resetView(); dirty = true; });
    canvas.addEventListener('webglcontextlost', function (e) { e.preventDefault(); fail('the WebGL context was lost'); });

    function frameAt(t) { var k = 0; while (k + 1 < frames.length && frames[k + 1].start <= t) k++; return k; }
    function draw() {
      var w = Math.round(canvas.clientWidth * (window.devicePixelRatio || 1)) || 480;
      var h = Math.round(canvas.clientHeight * (window.devicePixelRatio || 1)) || 400;
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      gl.viewport(0, 0, w, h);
      gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.enable(gl.DEPTH_TEST);
      var dir = [Math.cos(cam.pitch) * Math.sin(cam.yaw), Math.sin(cam.pitch), Math.cos(cam.pitch) * Math.cos(cam.yaw)];
      var eye = cam.target.map(function (c, a) { return c + cam.dist * dir[a]; });
      var near = Math.max(cam.dist - 2 * cam.radius, 0.01 * cam.radius), far = cam.dist + 2 * cam.radius;
      gl.useProgram(prog);
      gl.uniformMatrix4fv(loc.uViewProj, false, mul(perspective(fov, w / h, near, far), lookAt(eye, cam.target, [0, 1, 0])));
      gl.uniform3fv(loc.uLight, norm([dir[0] + 0.4 * Math.cos(cam.yaw), dir[1] + 0.6, dir[2] - 0.4 * Math.sin(cam.yaw)]));
      gl.uniform1f(loc.uShade, shade ? 1 : 0);
      frames[status.frame].items.forEach(function (it) {
        var p = it.prim;
        [['aPos', p.position], ['aNormal', p.normal], ['aColor', p.color]].forEach(function (a) {
          gl.bindBuffer(gl.ARRAY_BUFFER, a[1]);
          gl.enableVertexAttribArray(loc[a[0]]);
          gl.vertexAttribPointer(loc[a[0]], 3, gl.FLOAT, false, 0, 0);
        });
        gl.uniformMatrix4fv(loc.uModel, false, it.matrix);
        gl.uniform3fv(loc.uFactor, p.factor);
        gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, p.index);
        gl.drawElements(gl.TRIANGLES, p.count, p.big ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT, 0);
      });
      status.drawn += 1;
      label.textContent = frames.length < 2 ? 'static mesh'
        : 'frame ' + (status.frame + 1) + ' / ' + frames.length + ' (' + status.time.toFixed(2) + ' s)';
      play.textContent = status.playing ? 'pause' : 'play';
      slider.value = status.frame;
    }

    status.play = function () { status.playing = frames.length > 1 && !status.error; dirty = true; };
    status.pause = function () { status.playing = false; dirty = true; };
    status.setFrame = function (k) {
      status.frame = Math.max(0, Math.min(frames.length - 1, k | 0)); status.time = frames[status.frame].start; dirty = true;
    };
    status.setAutoRotate = function (on) { autoRotate = rotateBox.checked = !!on; dirty = true; };
    status.setShading = function (on) { shade = shadeBox.checked = !!on; dirty = true; };
    status.coverage = function () {  // draw now and read the pixels back before the browser composites them
      draw();
      var px = new Uint8Array(canvas.width * canvas.height * 4), hit = 0;
      gl.readPixels(0, 0, canvas.width, canvas.height, gl.RGBA, gl.UNSIGNED_BYTE, px);
      for (var i = 0; i < px.length; i += 4) {
        if (Math.abs(px[i] - 244) + Math.abs(px[i + 1] - 244) + Math.abs(px[i + 2] - 244) > 30) hit++;
      }
      return hit / (canvas.width * canvas.height);
    };

    var last = null;
    function tick(now) {
      if (status.error) return;
      var dt = last === null ? 0 : Math.min((now - last) / 1000, 0.25);  // no jump after a hidden tab
      last = now;
      if (status.playing && status.duration > 0) {
        status.time = (status.time + dt) % status.duration;
        var k = frameAt(status.time);
        if (k !== status.frame) { status.frame = k; dirty = true; }
        dirty = true;  // the time label moves
      }
      if (autoRotate && !drag) { cam.yaw += dt * 0.35; dirty = true; }
      if (dirty) {
        try { draw(); } catch (e) { fail('drawing failed: ' + (e && e.message ? e.message : e)); return; }
        dirty = false;
      }
      requestAnimationFrame(tick);
    }
    status.frames = frames.length;
    status.loaded = true;
    status.play();
    requestAnimationFrame(tick);
    return status;
  };
})();
