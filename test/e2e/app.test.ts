// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// The app in Chromium (browser mode), against the real manager, VM processes and guests:
// the library, the New VM dialog, consoles, lifecycle buttons and shortcuts, and a VM
// process killed with SIGKILL.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import { guest } from '../helpers/vm';
import {
  browserSkipReason, consoleText, fitsWidth, fixtureSkipReason, unnamedControls, libraryItem, screenshot, startE2eApp, waitForBadge, waitForConsole,
  waitUntil, type E2eApp,
  withDiagnostics,
} from './harness';

const skip = browserSkipReason();

interface NewVm {
  name: string;
  memory?: string;
  optionRom?: string;
  testProgram?: string;
}

/** Fills the New VM dialog the way a user does and creates the VM. */
async function createThroughDialog(page: Page, vm: NewVm, opts: { screenshotName?: string } = {}): Promise<void> {
  await page.getByRole('button', { name: 'New VM', exact: true }).click();
  const dialog = page.getByRole('dialog', { name: 'New VM' });
  await dialog.waitFor();
  await dialog.getByLabel('Name').fill(vm.name);
  await dialog.getByLabel('Memory').fill(vm.memory ?? '64M');
  if (vm.optionRom || vm.testProgram) await dialog.locator('summary', { hasText: 'Advanced' }).click();
  if (vm.optionRom) {
    await dialog.getByRole('button', { name: 'Add option ROM' }).click();
    await dialog.getByRole('textbox', { name: 'Option ROM 1', exact: true }).fill(vm.optionRom);
  }
  if (vm.testProgram) {
    await dialog.getByLabel('Show developer options').check();
    await dialog.getByLabel('Test program (developer)').check();
    await dialog.getByLabel('Test program', { exact: true }).fill(vm.testProgram);
  }
  if (opts.screenshotName) await screenshot(page, opts.screenshotName);
  await dialog.getByRole('button', { name: 'Create' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.getByRole('heading', { level: 2, name: vm.name }).waitFor();
}

describe('Porthole in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;

  before(async () => {
    app = await startE2eApp();
  });

  after(async () => {
    await app?.close();
  });

  it('validates the New VM dialog as the user types, and Escape closes it', () => withDiagnostics(app, async () => {
    const { page } = app;
    await page.getByText('No VMs yet.').waitFor();
    await screenshot(page, 'library-empty');

    await page.keyboard.press('Control+N');
    const dialog = page.getByRole('dialog', { name: 'New VM' });
    await dialog.waitFor();
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });

    await page.getByRole('button', { name: 'New VM', exact: true }).click();
    await dialog.waitFor();
    const name = dialog.getByLabel('Name');
    await name.fill('');
    await dialog.getByText('Name is required.').waitFor();
    assert.equal(await name.getAttribute('aria-invalid'), 'true');
    await name.fill('Scratch');
    await dialog.getByText('Name is required.').waitFor({ state: 'detached' });

    const memory = dialog.getByLabel('Memory');
    await memory.fill('lots');
    await dialog.getByText('Memory must be a number with an optional unit, like 512M or 2G.').waitFor();
    await memory.fill('1.5G');
    await dialog.getByText(/^Memory must/).waitFor({ state: 'detached' });

    await dialog.getByLabel('vCPUs').fill('0');
    await dialog.getByText('vCPUs must be a whole number from 1 to 64.').waitFor();
    await dialog.getByLabel('vCPUs').fill('2');

    // A file that does not exist is reported by main, next to its field.
    await dialog.getByLabel('Linux kernel').check();
    await dialog.getByLabel('Kernel', { exact: true }).fill('/nonexistent/vmlinuz');
    await dialog.getByText('Kernel: /nonexistent/vmlinuz does not exist.').waitFor();
    await dialog.getByLabel('Kernel', { exact: true }).fill('relative/vmlinuz');
    await dialog.getByText('Kernel must be an absolute path (starting with /).').waitFor();

    assert.deepEqual(await unnamedControls(page), [], 'unnamed controls in the New VM dialog');

    // Submitting with problems keeps the dialog open and focuses the first bad field.
    await dialog.getByRole('button', { name: 'Create' }).click();
    await waitUntil('focus on the kernel field', () => dialog.getByLabel('Kernel', { exact: true }).evaluate((el) => el === (el.ownerDocument.activeElement)), (v) => v);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    assert.equal(await page.getByRole('option').count(), 0, 'a cancelled dialog creates nothing');
  }));

  it('boots SeaBIOS with a test option ROM and shows its line in the console; stops and deletes the VM', {
    skip: fixtureSkipReason('optionrom') ?? false,
  }, () => withDiagnostics(app, async () => {
    const { page } = app;
    await createThroughDialog(page, { name: 'ROM test', memory: '128M', optionRom: guest('optionrom') }, { screenshotName: 'new-vm-dialog' });
    await libraryItem(page, 'ROM test').locator('.badge', { hasText: 'Stopped' }).waitFor();

    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await waitForConsole(page, /porthole option rom ok/);
    await screenshot(page, 'console-option-rom');
    assert.equal(await fitsWidth(page), true, 'no horizontal scrolling at 1280x720');

    await page.getByRole('button', { name: 'Stop', exact: true }).click();
    await waitForBadge(page, 'Stopped');
    await page.getByText(/Last run: The VM was stopped\./).waitFor();
    // The console keeps the last run's output.
    assert.match(await consoleText(page), /porthole option rom ok/);

    await page.getByRole('button', { name: 'Delete…' }).click();
    const confirm = page.getByRole('alertdialog', { name: 'Delete ROM test?' });
    await confirm.waitFor();
    await confirm.getByRole('button', { name: 'Delete' }).click();
    await confirm.waitFor({ state: 'detached' });
    await libraryItem(page, 'ROM test').waitFor({ state: 'detached' });
    await page.getByText('No VMs yet.').waitFor();
  }));

  it('types into the echo guest through the console, with shortcuts for pause, resume and stop', {
    skip: fixtureSkipReason('echo') ?? false,
  }, () => withDiagnostics(app, async () => {
    const { page } = app;
    await createThroughDialog(page, { name: 'Echo', testProgram: guest('echo') });

    await page.keyboard.press('Control+Shift+S');
    await waitForBadge(page, 'Running');
    await waitForConsole(page, /porthole echo ready/);

    const terminal = page.locator('.console-terminal');
    await terminal.click();
    await page.keyboard.type('hello porthole');
    await waitForConsole(page, /porthole echo ready[\s\S]*hello porthole/);

    // Plain shortcuts belong to the console while it has focus: Ctrl+N goes to the guest.
    await page.keyboard.press('Control+N');
    await page.keyboard.type('!');
    await waitForConsole(page, /hello porthole.*!/);
    assert.equal(await page.getByRole('dialog').count(), 0, 'Ctrl+N in the console must not open the New VM dialog');

    // Ctrl+Shift shortcuts still reach the app from the console.
    await page.keyboard.press('Control+Shift+P');
    await waitForBadge(page, 'Paused');
    await page.keyboard.press('Control+Shift+S');
    await waitForBadge(page, 'Running');
    await page.keyboard.type(' again');
    await waitForConsole(page, /! again/);
    await screenshot(page, 'console-echo');

    // Copy: a double-clicked word, then the whole console.
    const copyButton = page.getByRole('button', { name: 'Copy', exact: true });
    assert.equal(await copyButton.isDisabled(), true, 'Copy needs a selection');
    const row = await page.locator('.console-terminal .xterm-rows > div').nth(1).boundingBox();
    assert.ok(row, 'the second console row is on screen');
    await page.mouse.dblclick(row.x + 12, row.y + row.height / 2);
    await waitUntil('Copy to become enabled', () => copyButton.isEnabled(), (v) => v);
    await copyButton.click();
    assert.equal(await page.evaluate('navigator.clipboard.readText()'), 'hello');
    await page.getByRole('button', { name: 'Copy all' }).click();
    assert.match(String(await page.evaluate('navigator.clipboard.readText()')), /^porthole echo ready\r?\nhello porthole.*! again$/);

    // Another port has its own stream; coming back replays COM1's scroll-back.
    await page.getByRole('combobox', { name: 'Console port' }).selectOption('com2');
    await waitUntil('an empty COM2 console', () => consoleText(page), (t) => !/porthole/.test(t));
    await page.getByRole('combobox', { name: 'Console port' }).selectOption('com1');
    await waitForConsole(page, /porthole echo ready[\s\S]*hello porthole.*! again/);

    await page.keyboard.press('Control+Shift+X');
    await waitForBadge(page, 'Stopped');

    // Delete from the library with the Delete key, after confirming.
    await libraryItem(page, 'Echo').click();
    await page.keyboard.press('Delete');
    const confirm = page.getByRole('alertdialog', { name: 'Delete Echo?' });
    await confirm.waitFor();
    await confirm.getByRole('button', { name: 'Delete' }).click();
    await libraryItem(page, 'Echo').waitFor({ state: 'detached' });
  }));

  it('shows a VM whose process was killed with SIGKILL as crashed, with the reason, and keeps working', {
    skip: fixtureSkipReason('echo') ?? false,
  }, () => withDiagnostics(app, async () => {
    const { page } = app;
    await createThroughDialog(page, { name: 'Victim', testProgram: guest('echo') });
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await waitForConsole(page, /porthole echo ready/);

    const victim = app.processes[app.processes.length - 1];
    assert.ok(victim?.handle.pid, 'the manager started a VM process');
    process.kill(victim.handle.pid, 'SIGKILL');

    await waitForBadge(page, 'Crashed');
    const alert = page.locator('.exit-panel');
    await alert.getByRole('heading', { name: 'The VM crashed' }).waitFor();
    await alert.getByText('The VM process was killed by signal SIGKILL.', { exact: true }).waitFor();
    assert.match(await alert.innerText(), /signal SIGKILL/);
    await libraryItem(page, 'Victim').locator('.badge', { hasText: 'Crashed' }).waitFor();
    await screenshot(page, 'vm-crashed');

    // The app keeps working: another VM is created and runs.
    await createThroughDialog(page, { name: 'Survivor', testProgram: guest('echo') });
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await waitForConsole(page, /porthole echo ready/);
    await screenshot(page, 'library-after-crash');

    // And the crashed one starts again.
    await libraryItem(page, 'Victim').click();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await page.locator('.exit-panel').waitFor({ state: 'detached' });

    for (const name of ['Victim', 'Survivor']) {
      await libraryItem(page, name).click();
      await page.getByRole('button', { name: 'Force off' }).click();
      await waitForBadge(page, 'Stopped');
      await page.getByText('Last run: The VM was forced off.').waitFor();
    }
  }));

  it('ran without script errors or Content-Security-Policy violations in the page', () => {
    const problems = app.diagnostics.filter((line) =>
      line.startsWith('browser page error') || (line.startsWith('browser') && /Content Security Policy|Refused to/i.test(line)));
    assert.deepEqual(problems, []);
  });
});
