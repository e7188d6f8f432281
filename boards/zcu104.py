# SPDX-License-Identifier: BSD-2-Clause
"""Xilinx (AMD) Zynq UltraScale+ MPSoC ZCU104 evaluation board.

amaranth-boards has no ZCU104 (neither PyPI 0.0.21 nor upstream main), so this file is ours. It
follows ``amaranth_boards/kcu105.py``: class attributes only, resources built with the
``amaranth_boards.resources`` helpers. It lists only the PL pins this project uses; the DDR the
accelerator reaches belongs to the PS (see ``boards/system.py``).

Pin sources, cited per resource below:

``[BS]``
    XilinxBoardStore ``boards/Xilinx/zcu104/1.1/part0_pins.xml`` (the Vivado board files), which
    gives ``CLK_300_P/N``, ``CPU_RESET``, ``GPIO_LED_[0-3]_LS``, ``GPIO_PB_SW[0-3]`` and
    ``GPIO_DIP_SW[0-3]`` with their I/O standards, for part ``xczu7ev-ffvc1156-2-e``.
``[LX]``
    LiteX-boards ``litex_boards/platforms/xilinx_zcu104.py`` (litex-hub, 3dc608a), which agrees
    with [BS] on every pin both list, and adds ``clk125`` (absent from [BS]).

**Part string.** [BS] (the board part Vivado uses, ``xilinx.com:zcu104:part0:1.1``) names
``xczu7ev-ffvc1156-2-e``; so do published Vivado projects for the board. [LX] uses
``xczu7ev-ffvc1156-2-i`` (industrial grade). Commercial ``-2-e`` is used here because the block
design applies the board preset, which requires the board part's exact part; if a board is ever
found with an ``-i`` device, only timing margins differ (same die and package). Cross-check the
pins against AMD UG1267 before connecting anything other than the LEDs.
"""

from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource
from amaranth.vendor import XilinxPlatform
from amaranth_boards.resources import ButtonResources, LEDResources, SwitchResources

__all__ = ["ZCU104Platform", "PART", "BOARD_PART_PATTERN"]

#: Full Vivado part name of the ZCU104's device.
PART = "xczu7ev-ffvc1156-2-e"

#: Pattern for Vivado's ``get_board_parts`` that selects the ZCU104 board files, any version.
BOARD_PART_PATTERN = "xilinx.com:zcu104:part0:*"


class ZCU104Platform(XilinxPlatform):
    """ZCU104 (XCZU7EV-2FFVC1156E): PL clocks, reset, user LEDs, buttons and DIP switches.

    Resources: ``clk125`` (default clock), ``clk300``, ``rst`` (CPU_RESET, active high),
    ``led`` 0-3, ``button`` 0-3, ``switch`` 0-3. All 3.3 V I/O is in HD bank 88 (LVCMOS33).
    """

    device = "xczu7ev"
    package = "ffvc1156"
    speed = "2-e"            # [BS] part_name; [LX] says 2-i (see the module docstring)
    default_clk = "clk125"
    default_rst = "rst"

    resources = [
        # 125 MHz PL clock, LVDS [LX: clk125 F23/E23]; not in [BS] part0_pins.xml.
        Resource("clk125", 0, DiffPairs("F23", "E23", dir="i"),
                 Clock(125e6), Attrs(IOSTANDARD="LVDS")),
        # 300 MHz PL clock (also the PL DDR4 reference) [BS: CLK_300_P AH18, CLK_300_N AH17,
        # DIFF_SSTL12; LX: same pins, DIFF_SSTL12_DCI].
        Resource("clk300", 0, DiffPairs("AH18", "AH17", dir="i"),
                 Clock(300e6), Attrs(IOSTANDARD="DIFF_SSTL12")),
        # CPU_RESET push button, active high [BS: CPU_RESET M11 LVCMOS33; LX: cpu_reset M11].
        Resource("rst", 0, Pins("M11", dir="i"), Attrs(IOSTANDARD="LVCMOS33")),

        # User LEDs, active high [BS: GPIO_LED_0_LS D5, _1_LS D6, _2_LS A5, _3_LS B5, LVCMOS33;
        # LX: user_led 0-3 same pins].
        *LEDResources(pins="D5 D6 A5 B5", attrs=Attrs(IOSTANDARD="LVCMOS33")),
        # User push buttons [BS: GPIO_PB_SW0 B4, SW1 C4, SW2 B3, SW3 C3, LVCMOS33;
        # LX: user_btn 0-3 same pins].
        *ButtonResources(pins="B4 C4 B3 C3", attrs=Attrs(IOSTANDARD="LVCMOS33")),
        # 4-position DIP switch [BS: GPIO_DIP_SW0 E4, SW1 D4, SW2 F5, SW3 F4, LVCMOS33;
        # LX: user_dip 0-3 same pins].
        *SwitchResources(pins="E4 D4 F5 F4", attrs=Attrs(IOSTANDARD="LVCMOS33")),
    ]
    connectors = []

    @property
    def part(self):
        """Full Vivado part name (``xczu7ev-ffvc1156-2-e``)."""
        return f"{self.device}-{self.package}-{self.speed}"

    def pin_of(self, name, number=0):
        """Return ``(package_pin, attrs)`` of a single-pin resource, e.g. ``pin_of("led", 0)``.

        Used to write constraints for ports of the Vivado block design (which the Amaranth
        platform flow does not see), so that every pin stays defined in this file only.
        """
        resource = self.lookup(name, number)
        if len(resource.ios) != 1 or not isinstance(resource.ios[0], Pins) \
                or len(resource.ios[0].names) != 1:
            raise ValueError(f"resource {name}#{number} is not a single pin")
        return resource.ios[0].names[0], dict(resource.attrs)


if __name__ == "__main__":
    # No Vivado needed: writes the platform build files of a blinky into build/zcu104_blinky.
    from amaranth_boards.test.blinky import Blinky
    plan = ZCU104Platform().build(Blinky(), name="blinky", do_build=False)
    plan.extract("build/zcu104_blinky")
    print("build/zcu104_blinky")
