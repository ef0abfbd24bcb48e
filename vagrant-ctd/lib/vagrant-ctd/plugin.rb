# frozen_string_literal: true

require "vagrant"

module VagrantPlugins
  module Ctd
    class Plugin < Vagrant.plugin("2")
      name "ctd"
      description "ctd system containers and VMs as Vagrant machines"

      config(:ctd, :provider) do
        require_relative "config"
        Config
      end

      provider(:ctd, box_optional: true, parallel: true) do
        require_relative "provider"
        Provider
      end

      synced_folder(:ctd, 20) do
        require_relative "synced_folder"
        SyncedFolder
      end

      provider_capability(:ctd, :snapshot_list) do
        require_relative "cap"
        Cap
      end
    end
  end
end
