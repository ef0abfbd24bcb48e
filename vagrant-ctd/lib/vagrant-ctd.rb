# frozen_string_literal: true

# Entry point Vagrant requires when the plugin is installed (gem name vagrant-ctd).
require "vagrant-ctd/plugin"
